//! Memory-bandwidth probe for the append path: CRC-32C of cold (DRAM) versus hot
//! (cache-resident) data, one thread versus two. See benches/README.md "Storage".
use std::time::Instant;

fn crc(b: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b) as u32
}

fn main() {
    let size = 512usize << 20;
    let buf: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    for _ in 0..3 {
        let t = Instant::now();
        let mut x = 0;
        for c in buf.chunks(1 << 20) {
            x ^= crc(c);
        }
        let one = 512.0 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (a, b) = buf.split_at(size / 2);
        let ya = std::thread::scope(|s| {
            let h = s.spawn(|| b.chunks(1 << 20).fold(0, |x, c| x ^ crc(c)));
            let ya = a.chunks(1 << 20).fold(0, |x, c| x ^ crc(c));
            ya ^ h.join().unwrap()
        });
        let two = 512.0 / t.elapsed().as_secs_f64();
        let hot = &buf[..16 << 10];
        let t = Instant::now();
        let mut z = 0;
        for _ in 0..65536 {
            z ^= crc(std::hint::black_box(hot));
        }
        let hot_rate = 1024.0 / t.elapsed().as_secs_f64();
        println!(
            "cold 1 thread {one:.0} MiB/s, cold 2 threads {two:.0} MiB/s, hot 16 KiB {hot_rate:.0} MiB/s ({})",
            x ^ ya ^ z
        );
    }
}
