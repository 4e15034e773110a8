//! The eBPF pipeline end to end: the object embedded in rudder-proxy loads into this kernel,
//! and packets pushed through it with BPF_PROG_TEST_RUN come out with the right verdict and
//! counts.

use rudder_abi::names;
use rudder_proxy::ebpf::counter::{Counter, sample_frame};

const XDP_PASS: u32 = 2;

fn load() -> Counter {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "loading eBPF programs needs root: run the tests as root (CI does)"
    );
    Counter::load().expect("the kernel must accept the embedded eBPF programs")
}

#[test]
fn counter_counts_every_packet_and_passes_it() {
    let counter = load();
    let frame = sample_frame();

    let first = counter.test_run(names::XDP_COUNTER, &frame, 1).expect("test run");
    assert_eq!(first.verdict, XDP_PASS);
    let totals = counter.totals().expect("read counters");
    assert_eq!((totals.packets, totals.bytes), (1, 64));

    let many = counter.test_run(names::XDP_COUNTER, &frame, 1000).expect("test run");
    assert_eq!(many.verdict, XDP_PASS);
    let totals = counter.totals().expect("read counters");
    assert_eq!(totals.packets, 1001);
    assert_eq!(totals.bytes, 1001 * 64);
    println!(
        "program {} loaded; 1001 packets of 64 bytes -> XDP_PASS; counter map {}: packets={} bytes={}; {} ns/packet",
        names::XDP_COUNTER,
        names::COUNTERS_MAP,
        totals.packets,
        totals.bytes,
        many.ns_per_run
    );
}

#[test]
fn bare_pass_program_passes_and_counts_nothing() {
    let counter = load();
    let run = counter
        .test_run(names::XDP_PASS, &sample_frame(), 100)
        .expect("test run");
    assert_eq!(run.verdict, XDP_PASS);
    let totals = counter.totals().expect("read counters");
    assert_eq!(totals.packets, 0, "the pass program must not touch the counters");
    println!(
        "program {} loaded; 100 packets -> XDP_PASS; counter map untouched; {} ns/packet",
        names::XDP_PASS,
        run.ns_per_run
    );
}

#[test]
fn embedded_object_carries_btf() {
    // BTF is what lets the kernel check map layouts and print readable verifier logs.
    let object = rudder_proxy::ebpf::object::OBJECT;
    let has_btf = object.windows(5).any(|w| w == b".BTF\0");
    assert!(has_btf, "the eBPF object was built without a .BTF section");
    println!("embedded eBPF object: {} bytes, with .BTF", object.len());
}
