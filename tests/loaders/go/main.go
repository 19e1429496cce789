// sdt-go-loader: loads a BPF object with cilium/ebpf exactly as a Go program
// would, test-runs programs on packets and dumps what the test compares.
//
//	sdt-go-loader OBJECT [-pin-dir DIR] [-run PROG]... [-dump MAP]... [-ring MAP] < packets
//
// Packets come on stdin, one hex string per line. Output is JSON lines on
// stdout (see tests/loaders/README.md): one "loaded" record, one "run" record
// per program and packet, one "ring" record per ring buffer sample, one "map"
// record per entry of a dumped map. Any failure: one line on stderr, exit 1;
// bad usage: exit 2.
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

const (
	exitFailure = 1
	exitUsage   = 2
	// A verifier log big enough for the largest sample program's rejection.
	verifierLogSize = 1 << 24
)

type names []string

func (n *names) String() string     { return strings.Join(*n, ",") }
func (n *names) Set(v string) error { *n = append(*n, v); return nil }

type options struct {
	object string
	pinDir string
	runs   names
	dumps  names
	ring   string
}

func main() {
	opts, err := parseArgs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdt-go-loader: %v\n", err)
		os.Exit(exitUsage)
	}
	if err := run(opts, json.NewEncoder(os.Stdout)); err != nil {
		fmt.Fprintf(os.Stderr, "sdt-go-loader: %s\n", oneLine(err))
		os.Exit(exitFailure)
	}
}

func parseArgs() (options, error) {
	var o options
	fs := flag.NewFlagSet("sdt-go-loader", flag.ContinueOnError)
	fs.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory for maps pinned by name (MapOptions.PinPath)")
	fs.Var(&o.runs, "run", "program to test-run on every packet (repeatable)")
	fs.Var(&o.dumps, "dump", "map to dump after the runs (repeatable)")
	fs.StringVar(&o.ring, "ring", "", "ring buffer map to drain after the runs")
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		return o, errors.New("usage: sdt-go-loader OBJECT [-pin-dir DIR] [-run PROG]... [-dump MAP]... [-ring MAP]")
	}
	o.object = os.Args[1]
	if err := fs.Parse(os.Args[2:]); err != nil {
		return o, err
	}
	if fs.NArg() != 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, nil
}

func run(o options, out *json.Encoder) error {
	spec, err := ebpf.LoadCollectionSpec(o.object)
	if err != nil {
		return fmt.Errorf("%s: %w", o.object, err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps:     ebpf.MapOptions{PinPath: o.pinDir},
		Programs: ebpf.ProgramOptions{LogSizeStart: verifierLogSize},
	})
	if err != nil {
		return fmt.Errorf("%s: load: %w", o.object, err)
	}
	defer coll.Close()
	if err := out.Encode(loadedRecord(coll)); err != nil {
		return err
	}
	packets, err := readPackets()
	if err != nil {
		return err
	}
	for _, name := range o.runs {
		if err := runProgram(coll, name, packets, out); err != nil {
			return err
		}
	}
	if o.ring != "" {
		if err := drainRing(coll, o.ring, out); err != nil {
			return err
		}
	}
	for _, name := range o.dumps {
		if err := dumpMap(coll, name, out); err != nil {
			return err
		}
	}
	return nil
}

func loadedRecord(coll *ebpf.Collection) map[string]any {
	progs := make([]string, 0, len(coll.Programs))
	for name := range coll.Programs {
		progs = append(progs, name)
	}
	maps := make([]string, 0, len(coll.Maps))
	for name := range coll.Maps {
		maps = append(maps, name)
	}
	sort.Strings(progs)
	sort.Strings(maps)
	return map[string]any{"loaded": "cilium/ebpf", "programs": progs, "maps": maps}
}

func readPackets() ([][]byte, error) {
	var packets [][]byte
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(nil, 1<<20)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" {
			continue
		}
		p, err := hex.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("packet %d: %w", len(packets), err)
		}
		packets = append(packets, p)
	}
	return packets, scanner.Err()
}

func runProgram(coll *ebpf.Collection, name string, packets [][]byte, out *json.Encoder) error {
	prog, ok := coll.Programs[name]
	if !ok {
		return fmt.Errorf("no program %q", name)
	}
	for i, p := range packets {
		ret, err := prog.Run(&ebpf.RunOptions{Data: p})
		if err != nil {
			return fmt.Errorf("%s: packet %d: %w", name, i, err)
		}
		if err := out.Encode(map[string]any{"run": name, "packet": i, "retval": ret}); err != nil {
			return err
		}
	}
	return nil
}

func drainRing(coll *ebpf.Collection, name string, out *json.Encoder) error {
	m, ok := coll.Maps[name]
	if !ok {
		return fmt.Errorf("no map %q", name)
	}
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer rd.Close()
	rd.SetDeadline(time.Now()) // everything the runs wrote is there already: do not wait
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := out.Encode(map[string]any{"ring": name, "data": hex.EncodeToString(rec.RawSample)}); err != nil {
			return err
		}
	}
}

func dumpMap(coll *ebpf.Collection, name string, out *json.Encoder) error {
	m, ok := coll.Maps[name]
	if !ok {
		return fmt.Errorf("no map %q", name)
	}
	var key, value []byte
	it := m.Iterate()
	for it.Next(&key, &value) {
		rec := map[string]any{"map": name, "key": hex.EncodeToString(key), "value": hex.EncodeToString(value)}
		if err := out.Encode(rec); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
