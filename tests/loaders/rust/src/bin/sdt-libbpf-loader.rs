//! sdt-libbpf-loader: loads a BPF object with libbpf-rs over the libbpf that
//! libbpf-sys vendors (built from source: the newest release), test-runs
//! programs on packets and dumps what the test compares.  Same command line
//! and output as sdt-go-loader.

use std::cell::RefCell;
use std::ffi::CStr;

use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, PrintLevel, RingBufferBuilder};
use sdt_rust_loaders::{emit, fail, hex, parse_args, read_packets};
use serde_json::json;

const TOOL: &str = "sdt-libbpf-loader";

fn main() {
    let o = parse_args(TOOL);
    // libbpf's info lines ("skipping unrecognized data section") are not failures.
    libbpf_rs::set_print(Some((PrintLevel::Warn, print_libbpf)));
    let mut builder = ObjectBuilder::default();
    if let Some(dir) = &o.pin_dir {
        builder
            .pin_root_path(dir)
            .unwrap_or_else(|e| fail(TOOL, format!("{}: {e}", dir.display())));
    }
    let open = builder
        .open_file(&o.object)
        .unwrap_or_else(|e| fail(TOOL, format!("{}: {e}", o.object.display())));
    let obj = open
        .load()
        .unwrap_or_else(|e| fail(TOOL, format!("{}: load: {e}", o.object.display())));
    report_loaded(&obj);
    let packets = read_packets().unwrap_or_else(|e| fail(TOOL, e));
    for name in &o.runs {
        run_program(&obj, name, &packets);
    }
    if let Some(ring) = &o.ring {
        drain_ring(&obj, ring);
    }
    for name in &o.dumps {
        dump_map(&obj, name);
    }
}

fn print_libbpf(_level: PrintLevel, message: String) {
    eprint!("{message}");
}

fn libbpf_version() -> String {
    // SAFETY: libbpf returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(libbpf_rs::libbpf_sys::libbpf_version_string()) }
        .to_string_lossy()
        .into_owned()
}

fn report_loaded(obj: &Object) {
    let mut programs: Vec<String> = obj
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    let mut maps: Vec<String> = obj
        .maps()
        .map(|m| m.name().to_string_lossy().into_owned())
        .collect();
    programs.sort_unstable();
    maps.sort_unstable();
    emit(
        json!({"loaded": "libbpf-rs", "libbpf": libbpf_version(), "programs": programs, "maps": maps}),
    );
}

fn run_program(obj: &Object, name: &str, packets: &[Vec<u8>]) {
    let prog = obj
        .progs_mut()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| fail(TOOL, format!("no program {name:?}")));
    for (i, packet) in packets.iter().enumerate() {
        let input = libbpf_rs::ProgramInput {
            data_in: Some(packet),
            ..Default::default()
        };
        let out = prog
            .test_run(input)
            .unwrap_or_else(|e| fail(TOOL, format!("{name}: packet {i}: {e}")));
        emit(json!({"run": name, "packet": i, "retval": out.return_value}));
    }
}

fn drain_ring(obj: &Object, name: &str) {
    let map = obj
        .maps()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| fail(TOOL, format!("no map {name:?}")));
    let samples = RefCell::new(Vec::new());
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&map, |data: &[u8]| {
            samples.borrow_mut().push(hex(data));
            0
        })
        .unwrap_or_else(|e| fail(TOOL, format!("{name}: {e}")));
    let ring = builder
        .build()
        .unwrap_or_else(|e| fail(TOOL, format!("{name}: {e}")));
    ring.consume()
        .unwrap_or_else(|e| fail(TOOL, format!("{name}: {e}")));
    drop(ring);
    for data in samples.into_inner() {
        emit(json!({"ring": name, "data": data}));
    }
}

fn dump_map(obj: &Object, name: &str) {
    let map = obj
        .maps()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| fail(TOOL, format!("no map {name:?}")));
    for key in map.keys() {
        let value = map
            .lookup(&key, MapFlags::ANY)
            .unwrap_or_else(|e| fail(TOOL, format!("{name}: {e}")));
        let value =
            value.unwrap_or_else(|| fail(TOOL, format!("{name}: key {} vanished", hex(&key))));
        emit(json!({"map": name, "key": hex(&key), "value": hex(&value)}));
    }
}
