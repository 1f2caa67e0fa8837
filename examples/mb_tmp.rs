use coreflow::numerics::{self, Par};
use faer::prelude::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    f();
    let mut v = vec![];
    for _ in 0..5 {
        let t0 = Instant::now();
        f();
        v.push(t0.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:34} min {:7.4}s med {:7.4}s {:6.1} GFLOPS(min)",
        v[0],
        v[2],
        flops / v[0] / 1e9
    );
}
/// lower triangle of dst (+)= a a^T by recursive 2x2 blocking down to `leaf`
fn syrk_blocked(mut dst: MatMut<'_, f64>, beta: Accum, a: MatRef<'_, f64>, leaf: usize) {
    let n = dst.nrows();
    if n <= leaf {
        numerics::syrk_lower(dst, beta, a, 1.0, Par::Seq);
        return;
    }
    let h = n / 2;
    let (a0, a1) = a.split_at_row(h);
    {
        let d = dst.rb_mut().submatrix_mut(h, 0, n - h, h);
        numerics::gemm(d, beta, a1, a0.transpose(), 1.0, Par::Seq);
    }
    syrk_blocked(dst.rb_mut().submatrix_mut(0, 0, h, h), beta, a0, leaf);
    syrk_blocked(
        dst.rb_mut().submatrix_mut(h, h, n - h, n - h),
        beta,
        a1,
        leaf,
    );
}
fn main() {
    let (nn, m, n) = (1000usize, 200usize, 200usize);
    let data: Vec<f64> = (0..nn * m * n)
        .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
        .collect();
    let s_stack = MatRef::from_row_major_slice(&data, nn * m, n);
    let mut b = Mat::<f64>::zeros(n, n);
    let fl = (nn * m * n * n) as f64;
    t("big syrk S^T S", fl, || {
        numerics::syrk_lower(
            b.as_mut(),
            Accum::Replace,
            s_stack.transpose(),
            1.0,
            Par::Seq,
        )
    });
    for leaf in [32usize, 50, 100] {
        t(&format!("big blocked leaf {leaf}"), fl, || {
            syrk_blocked(b.as_mut(), Accum::Replace, s_stack.transpose(), leaf)
        });
    }
    for kc in [2000usize, 20000] {
        t(&format!("big syrk k-chunks {kc}"), fl, || {
            for c in (0..nn * m).step_by(kc) {
                numerics::syrk_lower(
                    b.as_mut(),
                    if c == 0 { Accum::Replace } else { Accum::Add },
                    s_stack.subrows(c, kc).transpose(),
                    1.0,
                    Par::Seq,
                )
            }
        });
    }
    let mut a = Mat::<f64>::zeros(m, m);
    t("per-sample syrk", fl, || {
        a.fill(0.0);
        for i in 0..nn {
            let x = MatRef::from_row_major_slice(&data[i * m * n..(i + 1) * m * n], m, n);
            numerics::syrk_lower(a.as_mut(), Accum::Add, x, 1.0, Par::Seq);
        }
    });
    for leaf in [50usize, 100] {
        t(&format!("per-sample blocked leaf {leaf}"), fl, || {
            a.fill(0.0);
            for i in 0..nn {
                let x = MatRef::from_row_major_slice(&data[i * m * n..(i + 1) * m * n], m, n);
                syrk_blocked(a.as_mut(), Accum::Add, x, leaf);
            }
        });
    }
    t("per-sample syrk of X^T (B)", fl, || {
        a.fill(0.0);
        for i in 0..nn {
            let x = MatRef::from_row_major_slice(&data[i * m * n..(i + 1) * m * n], m, n);
            numerics::syrk_lower(a.as_mut(), Accum::Add, x.transpose(), 1.0, Par::Seq);
        }
    });
}
