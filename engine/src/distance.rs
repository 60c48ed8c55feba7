//! Distance metrics and the float kernels behind them.
//!
//! The metric is chosen at run time (it is part of a collection's manifest); callers resolve it
//! once per call into a [`Kernel`] function pointer, so no hot loop matches on the metric.

use crate::types::Metric;

/// The engine's arithmetic for a [`Metric`] (the type itself is shared with the operator).
pub trait Ranking {
    /// The ranking kernel for this metric: a monotone stand-in for the distance that is cheap
    /// to compute (no square root). Use [`Ranking::report`] to turn it into the reported value.
    fn kernel(self) -> Kernel;
    /// Turns a ranking score from [`Ranking::kernel`] into the distance shown to users.
    fn report(self, score: f32) -> f32;
}

impl Ranking for Metric {
    fn kernel(self) -> Kernel {
        let k = kernels();
        match self {
            Metric::Cosine | Metric::BinaryQuantizedCosine => k.cosine_normalized,
            Metric::Euclidean => k.l2_squared,
            Metric::Dot => k.neg_dot,
        }
    }

    fn report(self, score: f32) -> f32 {
        match self {
            Metric::Euclidean => score.max(0.0).sqrt(),
            _ => score,
        }
    }
}

/// A ranking function over two equal-length vectors.
pub type Kernel = fn(&[f32], &[f32]) -> f32;

/// The kernels selected for this CPU (resolved once, at first use).
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dot: Kernel,
    pub cosine_normalized: Kernel,
    pub l2_squared: Kernel,
    pub neg_dot: Kernel,
}

pub fn kernels() -> &'static Kernels {
    static KERNELS: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    KERNELS.get_or_init(|| available().last().expect("the portable kernels always exist").1)
}

/// Every kernel set this CPU can run, slowest first (the last is the one used). Tests check
/// each against a scalar reference.
pub fn available() -> Vec<(&'static str, Kernels)> {
    macro_rules! kernels_from {
        ($m:path) => {{
            use $m as k;
            Kernels {
                dot: k::dot,
                cosine_normalized: |a, b| 1.0 - k::dot(a, b),
                l2_squared: k::l2_squared,
                neg_dot: |a, b| -k::dot(a, b),
            }
        }};
    }
    #[allow(unused_mut)]
    let mut sets = vec![("portable", kernels_from!(portable))];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            sets.push(("avx2", kernels_from!(x86::avx2)));
        }
        if std::is_x86_feature_detected!("avx512f") {
            sets.push(("avx512", kernels_from!(x86::avx512)));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            sets.push(("neon", kernels_from!(arm::neon)));
        }
    }
    sets
}

/// Dot product with the best kernel for this CPU.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().dot)(a, b)
}

/// Scales `v` to unit length; returns `false` (leaving `v` untouched) for a zero vector.
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = dot(v, v).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

/// Lane-parallel bodies written so the compiler vectorises them: 16 independent accumulators,
/// a tail loop for lengths that are not a multiple of 16.
mod body {
    const LANES: usize = 16;

    #[inline(always)]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; LANES];
        let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for i in 0..LANES {
                acc[i] = x[i].mul_add(y[i], acc[i]);
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for (x, y) in ar.iter().zip(br) {
            sum += x * y;
        }
        sum
    }

    #[inline(always)]
    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f32; LANES];
        let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for i in 0..LANES {
                let d = x[i] - y[i];
                acc[i] = d.mul_add(d, acc[i]);
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for (x, y) in ar.iter().zip(br) {
            sum += (x - y) * (x - y);
        }
        sum
    }
}

mod portable {
    // Without FMA in hardware `mul_add` is a slow libm call; use plain multiply-add here.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [0.0f32; 8];
        let (ac, bc) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
    }

    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [0.0f32; 8];
        let (ac, bc) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for i in 0..8 {
                let d = x[i] - y[i];
                acc[i] += d * d;
            }
        }
        acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
    }
}

/// Wraps the lane-parallel bodies in functions compiled for a target feature, and exposes
/// them as safe functions that may only be selected after detection (see [`available`]).
macro_rules! feature_kernels {
    ($name:ident, $feature:literal) => {
        pub mod $name {
            #[target_feature(enable = $feature)]
            unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
                crate::distance::body::dot(a, b)
            }

            #[target_feature(enable = $feature)]
            unsafe fn l2_squared_impl(a: &[f32], b: &[f32]) -> f32 {
                crate::distance::body::l2_squared(a, b)
            }

            pub fn dot(a: &[f32], b: &[f32]) -> f32 {
                // SAFETY: `available` offers this module only after detecting the feature.
                unsafe { dot_impl(a, b) }
            }

            pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
                // SAFETY: as above.
                unsafe { l2_squared_impl(a, b) }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    feature_kernels!(avx2, "avx2,fma");
    feature_kernels!(avx512, "avx512f,avx2,fma");
}

#[cfg(target_arch = "aarch64")]
mod arm {
    feature_kernels!(neon, "neon");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scalar_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    fn scalar_l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum()
    }

    fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, usize)> {
        (0usize..300, 0usize..4).prop_flat_map(|(len, offset)| {
            (
                prop::collection::vec(-10.0f32..10.0, len + offset),
                prop::collection::vec(-10.0f32..10.0, len + offset),
                Just(offset),
            )
        })
    }

    proptest! {
        // Offsets make the slices start off the allocation's alignment.
        #[test]
        fn kernels_match_scalar_reference((a, b, off) in pair()) {
            let (a, b) = (&a[off..], &b[off..]);
            let tol = |x: f64| 1e-3 * (1.0 + x.abs());
            let (d, l) = (scalar_dot(a, b), scalar_l2(a, b));
            for (name, k) in available() {
                prop_assert!(((k.dot)(a, b) as f64 - d).abs() <= tol(d), "{} dot", name);
                prop_assert!(((k.neg_dot)(a, b) as f64 + d).abs() <= tol(d), "{} neg_dot", name);
                prop_assert!(((k.l2_squared)(a, b) as f64 - l).abs() <= tol(l), "{} l2", name);
            }
        }
    }

    #[test]
    fn the_fastest_detected_kernels_are_used() {
        let sets = available();
        assert_eq!(sets[0].0, "portable");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            assert!(sets.iter().any(|(n, _)| *n == "avx2"));
        }
        let a: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!((kernels().dot)(&a, &a), (sets.last().unwrap().1.dot)(&a, &a));
    }

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>().unwrap(), m);
        }
        let err = "manhattan".parse::<Metric>().unwrap_err();
        assert!(err.contains("manhattan"), "{err}");
    }

    #[test]
    fn each_metric_ranks_the_nearer_vector_first() {
        let q = [1.0, 0.0, 0.0];
        let near = [0.9, 0.1, 0.0];
        let far = [-1.0, 0.2, 0.0];
        for m in Metric::ALL {
            let (mut q, mut near, mut far) = (q, near, far);
            if m.normalizes() {
                normalize(&mut q);
                normalize(&mut near);
                normalize(&mut far);
            }
            let k = m.kernel();
            assert!(k(&q, &near) < k(&q, &far), "{m}");
        }
        assert_eq!(Metric::Euclidean.report(4.0), 2.0);
    }

    #[test]
    fn zero_vector_is_not_normalized() {
        let mut v = [0.0f32; 4];
        assert!(!normalize(&mut v));
        let mut v = [3.0f32, 4.0];
        assert!(normalize(&mut v));
        assert!((v[0] - 0.6).abs() < 1e-6);
    }
}
