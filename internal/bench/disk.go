package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// diskRounds is how many times the append-vs-disk scenario alternates the
// disk probe and ferry's appends: this shared virtual disk's bandwidth
// moves by ±30% from one second to the next, so each side gets several
// turns and the medians are compared.
const diskRounds = 3

// diskScenario measures the disk's sequential write+fsync bandwidth (1 MiB
// writes, each fsynced) and ferry's batched durable appends (batches of
// 1000 messages of 256 bytes from 4 appenders) over the same volume of
// payload, on the same disk, alternating in rounds.
func diskScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	rounds := diskRounds
	if s.diskBytes < 64<<20 {
		rounds = 1 // a smoke run
	}
	perRound := s.diskBytes / int64(rounds)
	l, err := openLog(ctx, filepath.Join(dir, "ferry-batch"), "bench")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	var diskMB, ferryMB, ferryDiskMB, ferryRate []float64
	var diskTime, ferryTime time.Duration
	for range rounds {
		d, err := diskProbe(dir, perRound)
		if err != nil {
			return nil, err
		}
		diskTime += d
		diskMB = append(diskMB, mbPerSec(perRound, d))
		before := dirBytes(filepath.Join(dir, "ferry-batch"))
		d, err = batchedAppends(ctx, l, int(perRound/payloadSize))
		if err != nil {
			return nil, err
		}
		ferryTime += d
		ferryMB = append(ferryMB, mbPerSec(perRound, d))
		ferryDiskMB = append(ferryDiskMB, mbPerSec(dirBytes(filepath.Join(dir, "ferry-batch"))-before, d))
		ferryRate = append(ferryRate, rate(int(perRound/payloadSize), d))
	}
	n := int(perRound/payloadSize) * rounds
	disk := Result{Scenario: "append-vs-disk", System: "disk: 1 MiB write + fsync", Messages: n, Seconds: diskTime.Seconds(), MBPerSec: median(diskMB),
		Note: fmt.Sprintf("median of %d rounds alternating with ferry's: %s MB/s", rounds, list(diskMB))}
	ferryRes := Result{Scenario: "append-vs-disk", System: "ferry: batched durable append (payload)", FsyncAck: "yes", Concurrency: batchAppenders, Messages: n, Seconds: ferryTime.Seconds(),
		MsgsPerSec: median(ferryRate), MBPerSec: median(ferryMB), Ratio: median(ferryMB) / median(diskMB),
		Note: fmt.Sprintf("ratio: median payload MB/s over median disk MB/s; rounds %s MB/s of payload, %s MB/s written to disk (framing, IDs, headers)", list(ferryMB), list(ferryDiskMB))}
	return []Result{disk, ferryRes}, nil
}

// diskProbe writes n bytes to a new file in 1 MiB writes, each fsynced,
// and returns how long that took.
func diskProbe(dir string, n int64) (time.Duration, error) {
	f, err := os.Create(filepath.Join(dir, "disk-probe"))
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	chunk := make([]byte, 1<<20)
	start := time.Now()
	for written := int64(0); written < n; written += int64(len(chunk)) {
		if _, err := f.Write(chunk); err != nil {
			return 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// fsyncProbe writes 8 KiB and fsyncs, n times, and returns each
// write+fsync's duration: the floor under any fsync-before-ack
// acknowledgement on this disk. With overwrite it rewrites a file written
// and fsynced beforehand, otherwise it appends to a new file: an fsync that
// grows a file also commits the filesystem's journal, so appending costs
// more. The log's small group commits overwrite (it zeroes the active
// segment ahead of its end), so the overwrite probe is their floor.
func fsyncProbe(dir string, n int, overwrite bool) ([]time.Duration, error) {
	f, err := os.Create(filepath.Join(dir, "fsync-probe"))
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	chunk := make([]byte, 8<<10)
	if overwrite {
		for range n {
			if _, err := f.Write(chunk); err != nil {
				return nil, err
			}
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if _, err := f.Write(chunk); err != nil {
			return nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return lat, nil
}

// fsyncResults measures the disk's 8 KiB write+fsync latency, appending
// and overwriting, as two result lines of scenario, and returns the
// overwrite line also on its own (the floor the scenario compares with).
func fsyncResults(scenario, dir string, n int) (lines []Result, floor Result, err error) {
	for _, overwrite := range []bool{false, true} {
		lat, err := fsyncProbe(dir, n, overwrite)
		if err != nil {
			return nil, Result{}, err
		}
		var total time.Duration
		for _, d := range lat {
			total += d
		}
		kind := "append"
		if overwrite {
			kind = "overwrite"
		}
		res := Result{Scenario: scenario, System: "disk: 8 KiB " + kind + " + fsync, one at a time", Concurrency: 1, Messages: n, Seconds: total.Seconds(), MsgsPerSec: rate(n, total)}
		res.percentiles(lat)
		lines = append(lines, res)
	}
	return lines, lines[1], nil
}

const batchAppenders, appendBatch = 4, 1000

// batchedAppends appends total messages in batches of appendBatch from
// batchAppenders goroutines and returns how long that took.
func batchedAppends(ctx context.Context, l *commitlog.Log, total int) (time.Duration, error) {
	payload := make([]byte, payloadSize)
	var wg sync.WaitGroup
	errs := make(chan error, batchAppenders)
	start := time.Now()
	for a := range batchAppenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]*ferry.Message, appendBatch)
			for done := a * appendBatch; done < total; done += batchAppenders * appendBatch {
				for i := range msgs {
					msgs[i] = &ferry.Message{Topic: "bench", Key: []byte{byte(i)}, Payload: payload}
				}
				if err := l.Append(ctx, msgs...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
		return el, nil
	}
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func mbPerSec(bytes int64, d time.Duration) float64 { return float64(bytes) / (1 << 20) / d.Seconds() }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func list(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}
