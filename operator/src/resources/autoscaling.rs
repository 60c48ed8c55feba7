//! The HorizontalPodAutoscaler (autoscaling/v2) of the replicas, when min/max are set.

use super::labels::{self, Role};
use crate::crd::VectorCollection;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use kube::ResourceExt;

pub const DEFAULT_CPU_UTILIZATION: i32 = 70;

pub fn autoscaler(vc: &VectorCollection) -> Option<HorizontalPodAutoscaler> {
    let spec = &vc.spec.replicas;
    if !super::replicas::autoscaled(spec) {
        return None;
    }
    let name = vc.name_any();
    let min = spec.min.unwrap_or(1);
    Some(HorizontalPodAutoscaler {
        metadata: labels::owned_meta(vc, labels::replicas_name(&name), Role::Replica),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: labels::replicas_name(&name),
            },
            min_replicas: Some(min),
            // Only min set: the autoscaler may still grow to a sane bound.
            max_replicas: spec.max.unwrap_or(min.max(1) * 4),
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(spec.target_cpu_utilization.unwrap_or(DEFAULT_CPU_UTILIZATION)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}
