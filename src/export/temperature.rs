//! Temperature scaling: T = argmin_T NLL(softmax(z/T)) on the validation split.
//! NLL(β·z) is convex in β = 1/T, so a golden-section search over log β finds the
//! minimum; T = 1 is always compared, so the result never raises the validation NLL.

/// Mean NLL of softmax(z·beta) for logits [N, C] and labels.
pub fn nll_at(z: &[f32], c: usize, y: &[i64], beta: f64) -> f64 {
    let mut total = 0.0;
    for (row, &label) in z.chunks_exact(c).zip(y) {
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |a, &v| a.max(beta * v as f64));
        let lse = m + row
            .iter()
            .map(|&v| (beta * v as f64 - m).exp())
            .sum::<f64>()
            .ln();
        total += lse - beta * row[label as usize] as f64;
    }
    total / y.len().max(1) as f64
}

/// The fitted temperature and the NLL before and after.
pub fn fit(z: &[f32], c: usize, y: &[i64]) -> (f64, f64, f64) {
    let f = |lb: f64| nll_at(z, c, y, lb.exp());
    let (mut a, mut b) = ((0.01f64).ln(), (100.0f64).ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (b - g * (b - a), a + g * (b - a));
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..100 {
        if f1 < f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - g * (b - a);
            f1 = f(x1);
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + g * (b - a);
            f2 = f(x2);
        }
    }
    let lb = (a + b) / 2.0;
    let before = f(0.0);
    let after = f(lb);
    if after < before {
        (1.0 / lb.exp(), before, after)
    } else {
        (1.0, before, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_temperature() {
        // Labels drawn from softmax(z/T0) in expectation: use many samples with exact
        // frequencies so the NLL minimizer is T0.
        let t0 = 2.5f64;
        let (c, mut z, mut y) = (3usize, vec![], vec![]);
        let base = [2.0f32, 0.0, -1.0];
        let p: Vec<f64> = {
            let e: Vec<f64> = base.iter().map(|&v| (v as f64 / t0).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        for (k, &pk) in p.iter().enumerate() {
            for _ in 0..(pk * 100000.0).round() as usize {
                z.extend_from_slice(&base);
                y.push(k as i64);
            }
        }
        let (t, before, after) = fit(&z, c, &y);
        assert!((t - t0).abs() < 0.01, "T = {t}");
        assert!(after <= before);
    }

    #[test]
    fn never_worse_than_t_equal_one() {
        let z = vec![1.0f32, 0.0, 0.0, 1.0];
        let (_, before, after) = fit(&z, 2, &[0, 1]);
        assert!(after <= before);
    }
}
