//! Integer GEMM/GEMV throughput (survey §3.3, HAWQ-V3 Eq. 24 INT32-accumulated products).
//!
//! Throughput is reported in elements per second where one element is one integer operation
//! (a multiply-accumulate counts as 2), so `Gelem/s` reads as GOP/s.
//! Run: `cargo bench -p mixprec-engine --bench kernels -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mixprec_engine::kernels::{gemm, set_max_threads, Backend, PackedI4, PackedI8};

fn lcg(seed: u64, n: usize) -> impl Iterator<Item = u8> {
    let mut s = seed;
    (0..n).map(move |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 56) as u8
    })
}

fn bench_gemm(c: &mut Criterion) {
    println!("backend: {:?}", Backend::best());
    let k = 4096;
    let cases: [(&str, usize, usize, u32); 5] = [
        ("i8/gemv_m1_n4096", 1, 4096, 8),
        ("i8/gemm_m16_n4096", 16, 4096, 8),
        ("i8/gemm_m128_n1024", 128, 1024, 8),
        ("i4/gemv_m1_n4096", 1, 4096, 4),
        ("i4/gemm_m16_n4096", 16, 4096, 4),
    ];
    let mut group = c.benchmark_group("gemm_k4096");
    for (name, m, n, bits) in cases {
        let a: Vec<u8> = lcg(1, m * k).collect();
        let w: Vec<i8> = lcg(2, n * k)
            .map(|x| if bits == 4 { (x as i8) >> 4 } else { x as i8 })
            .collect();
        let w8 = PackedI8::new(&w, n, k).expect("pack int8");
        let w4 =
            PackedI4::new(&w.iter().map(|&x| x >> 4).collect::<Vec<_>>(), n, k).expect("pack int4");
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for threads in [1usize, 2] {
            let id = format!("{name}/t{threads}");
            group.bench_function(id, |b| {
                set_max_threads(threads);
                b.iter(|| {
                    let c = if bits == 4 {
                        gemm(black_box(&a), m, 128, &w4)
                    } else {
                        gemm(black_box(&a), m, 128, &w8)
                    };
                    black_box(c.expect("gemm"))
                });
            });
        }
    }
    set_max_threads(0);
    group.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
