//! Benchmark workload: faults fresh anonymous pages as fast as it can and prints how long the
//! faulting took (its own loop only, so tracer start-up is never measured).
//!
//! Usage: fault_loop PAGES ROUNDS   -> prints `faults=N ns=T`

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().unwrap_or(0));
    let pages = args.next().filter(|&p| p > 0).unwrap_or(65536);
    let rounds = args.next().filter(|&r| r > 0).unwrap_or(8);
    let page = 4096;
    let len = pages * page;
    let mut total_ns = 0u128;
    for _ in 0..rounds {
        // SAFETY: a fresh private anonymous mapping, touched within bounds, then unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                eprintln!("mmap failed");
                std::process::exit(1);
            }
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            let started = std::time::Instant::now();
            for i in 0..pages {
                std::ptr::write_volatile((p as *mut u8).add(i * page), 1);
            }
            total_ns += started.elapsed().as_nanos();
            libc::munmap(p, len);
        }
    }
    println!("faults={} ns={total_ns}", pages * rounds);
}
