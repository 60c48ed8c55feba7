//! Checks shared by import (records) and search (queries): the same rules, one place.

use crate::distance::normalize;
use crate::types::Metric;

/// What is wrong with a vector: `(field, value, reason)`.
pub type Problem = (String, String, String);

/// Checks length and finiteness, and normalises it when the metric needs unit vectors.
pub fn prepare_vector(vector: &mut [f32], dimensions: usize, metric: Metric) -> Result<(), Problem> {
    if vector.len() != dimensions {
        return Err((
            "vector".into(),
            format!("{} values", vector.len()),
            format!("the collection has {dimensions} dimensions"),
        ));
    }
    if let Some((i, x)) = vector.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err((format!("vector[{i}]"), x.to_string(), "values must be finite (no NaN or infinity)".into()));
    }
    if metric.normalizes() && !normalize(vector) {
        return Err(("vector".into(), "all zeros".into(), format!("a zero vector has no {metric} direction")));
    }
    Ok(())
}

/// Partition and tag names: short, printable, and safe in labels and file names.
pub fn check_label(kind: &str, name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:/=".contains(c));
    if ok {
        Ok(())
    } else {
        Err((kind.into(), format!("{name:?}"), "must be 1-128 characters of letters, digits and _-.:/=".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_problems_name_the_field() {
        let mut v = vec![1.0, f32::NAN, 2.0];
        let (field, value, _) = prepare_vector(&mut v, 3, Metric::Euclidean).unwrap_err();
        assert_eq!((field.as_str(), value.as_str()), ("vector[1]", "NaN"));
        let mut v = vec![1.0, f32::INFINITY];
        assert_eq!(prepare_vector(&mut v, 2, Metric::Dot).unwrap_err().1, "inf");
        let mut v = vec![1.0; 5];
        let (_, value, reason) = prepare_vector(&mut v, 4, Metric::Dot).unwrap_err();
        assert_eq!(value, "5 values");
        assert!(reason.contains("4 dimensions"));
        let mut v = vec![0.0; 4];
        assert!(prepare_vector(&mut v, 4, Metric::Cosine).unwrap_err().2.contains("zero vector"));
        let mut v = vec![3.0, 4.0];
        prepare_vector(&mut v, 2, Metric::Cosine).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn labels() {
        assert!(check_label("tag", "category:shoes").is_ok());
        assert!(check_label("tag", "").is_err());
        assert!(check_label("partition", "a b").unwrap_err().1.contains("\"a b\""));
    }
}
