//! sdt-aya-loader: loads a BPF object with aya as a Rust program would,
//! test-runs programs on packets (aya's TestRun: BPF_PROG_TEST_RUN) and dumps
//! what the test compares.  Same command line and output as sdt-go-loader.

use aya::maps::{Array, HashMap, Map, RingBuf};
use aya::programs::{Program, TestRun, TestRunOptions};
use aya::{Btf, Ebpf, EbpfLoader};
use sdt_rust_loaders::{emit, fail, hex, parse_args, read_packets, section_of, Options};
use serde_json::json;

const TOOL: &str = "sdt-aya-loader";
const TP_BTF_PREFIX: &str = "tp_btf/";

fn main() {
    let o = parse_args(TOOL);
    let data = std::fs::read(&o.object)
        .unwrap_or_else(|e| fail(TOOL, format!("{}: {e}", o.object.display())));
    let mut loader = EbpfLoader::new();
    if let Some(dir) = &o.pin_dir {
        loader.default_map_pin_directory(dir);
    }
    let mut ebpf = loader
        .load(&data)
        .unwrap_or_else(|e| fail(TOOL, format!("{}: {e:?}", o.object.display())));
    load_programs(&mut ebpf, &data, &o);
    report_loaded(&ebpf);
    let packets = read_packets().unwrap_or_else(|e| fail(TOOL, e));
    for name in &o.runs {
        run_program(&ebpf, name, &packets);
    }
    if let Some(ring) = &o.ring {
        drain_ring(&mut ebpf, ring);
    }
    for name in &o.dumps {
        dump_map(&ebpf, name);
    }
}

/// aya loads programs one by one, each as its type asks.
fn load_programs(ebpf: &mut Ebpf, data: &[u8], o: &Options) {
    let btf = Btf::from_sys_fs().ok();
    for (name, prog) in ebpf.programs_mut() {
        let loaded = match prog {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::SocketFilter(p) => p.load(),
            Program::RawTracePoint(p) => p.load(),
            Program::KProbe(p) => p.load(),
            Program::TracePoint(p) => p.load(),
            Program::BtfTracePoint(p) => {
                let section = section_of(data, name).unwrap_or_default();
                let tracepoint = section.strip_prefix(TP_BTF_PREFIX).unwrap_or(name);
                let btf = btf
                    .as_ref()
                    .unwrap_or_else(|| fail(TOOL, "no kernel BTF for a tp_btf program"));
                p.load(tracepoint, btf)
            }
            other => fail(
                TOOL,
                format!(
                    "{name}: program type {:?} is not one this loader loads",
                    other.prog_type()
                ),
            ),
        };
        if let Err(e) = loaded {
            fail(TOOL, format!("{}: {name}: {e:?}", o.object.display()));
        }
    }
}

fn report_loaded(ebpf: &Ebpf) {
    let mut programs: Vec<&str> = ebpf.programs().map(|(n, _)| n).collect();
    let mut maps: Vec<&str> = ebpf.maps().map(|(n, _)| n).collect();
    programs.sort_unstable();
    maps.sort_unstable();
    emit(json!({"loaded": "aya", "programs": programs, "maps": maps}));
}

fn run_program(ebpf: &Ebpf, name: &str, packets: &[Vec<u8>]) {
    let prog = ebpf
        .program(name)
        .unwrap_or_else(|| fail(TOOL, format!("no program {name:?}")));
    for (i, packet) in packets.iter().enumerate() {
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::new()
        };
        let result = match prog {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::SocketFilter(p) => p.test_run(opts),
            _ => fail(TOOL, format!("{name}: not a packet program")),
        };
        let result = result.unwrap_or_else(|e| fail(TOOL, format!("{name}: packet {i}: {e:?}")));
        emit(json!({"run": name, "packet": i, "retval": result.return_value}));
    }
}

fn drain_ring(ebpf: &mut Ebpf, name: &str) {
    let map = ebpf
        .take_map(name)
        .unwrap_or_else(|| fail(TOOL, format!("no map {name:?}")));
    let mut ring = RingBuf::try_from(map).unwrap_or_else(|e| fail(TOOL, format!("{name}: {e:?}")));
    while let Some(item) = ring.next() {
        emit(json!({"ring": name, "data": hex(&item)}));
    }
}

/// aya's typed maps need key and value sizes at compile time: the ones the
/// tests' maps have (u32 keys; u64 counters, a pair of them, ...).
fn dump_map(ebpf: &Ebpf, name: &str) {
    let map = ebpf
        .map(name)
        .unwrap_or_else(|| fail(TOOL, format!("no map {name:?}")));
    let (data, hash) = match map {
        Map::Array(data) => (data, false),
        Map::HashMap(data) => (data, true),
        _ => fail(TOOL, format!("{name}: only array and hash maps are dumped")),
    };
    let info = data
        .info()
        .unwrap_or_else(|e| fail(TOOL, format!("{name}: {e:?}")));
    if info.key_size() != KEY_SIZE {
        fail(
            TOOL,
            format!(
                "{name}: key size {} is not one this loader dumps",
                info.key_size()
            ),
        );
    }
    match (info.value_size(), hash) {
        (4, false) => dump_array::<4>(map, name),
        (8, false) => dump_array::<8>(map, name),
        (16, false) => dump_array::<16>(map, name),
        (32, false) => dump_array::<32>(map, name),
        (4, true) => dump_hash::<4>(map, name),
        (8, true) => dump_hash::<8>(map, name),
        (16, true) => dump_hash::<16>(map, name),
        (32, true) => dump_hash::<32>(map, name),
        (size, _) => fail(
            TOOL,
            format!("{name}: value size {size} is not one this loader dumps"),
        ),
    }
}

const KEY_SIZE: u32 = 4;

fn dump_array<const N: usize>(map: &Map, name: &str) {
    let array: Array<_, [u8; N]> =
        Array::try_from(map).unwrap_or_else(|e| fail(TOOL, format!("{name}: {e:?}")));
    for (index, value) in array.iter().enumerate() {
        let value = value.unwrap_or_else(|e| fail(TOOL, format!("{name}[{index}]: {e:?}")));
        let key = u32::try_from(index).unwrap_or_else(|_| fail(TOOL, "array index past u32"));
        emit(json!({"map": name, "key": hex(&key.to_le_bytes()), "value": hex(&value)}));
    }
}

fn dump_hash<const N: usize>(map: &Map, name: &str) {
    let hash: HashMap<_, u32, [u8; N]> =
        HashMap::try_from(map).unwrap_or_else(|e| fail(TOOL, format!("{name}: {e:?}")));
    for entry in hash.iter() {
        let (key, value) = entry.unwrap_or_else(|e| fail(TOOL, format!("{name}: {e:?}")));
        emit(json!({"map": name, "key": hex(&key.to_le_bytes()), "value": hex(&value)}));
    }
}
