package bench

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// diskScenario measures the disk's sequential write+fsync bandwidth (1 MiB
// writes, each fsynced) and ferry's batched durable appends (batches of
// 1000 messages of 256 bytes from 4 appenders) over the same volume of
// payload, on the same disk.
func diskScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	f, err := os.Create(filepath.Join(dir, "disk-probe"))
	if err != nil {
		return nil, err
	}
	chunk := make([]byte, 1<<20)
	start := time.Now()
	for written := int64(0); written < s.diskBytes; written += int64(len(chunk)) {
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
	}
	diskTime := time.Since(start)
	f.Close()
	os.Remove(f.Name())
	diskMB := float64(s.diskBytes) / (1 << 20) / diskTime.Seconds()
	disk := Result{Scenario: "append-vs-disk", System: "disk: 1 MiB write + fsync", Messages: int(s.diskBytes / payloadSize), Seconds: diskTime.Seconds(), MBPerSec: diskMB}

	l, err := commitlog.Open(ctx, filepath.Join(dir, "ferry-batch"))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if err := l.CreateTopic(ctx, "bench", commitlog.TopicConfig{Partitions: 8}); err != nil {
		return nil, err
	}
	const batch, appenders = 1000, 4
	total := int(s.diskBytes / payloadSize)
	payload := make([]byte, payloadSize)
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	start = time.Now()
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]*ferry.Message, batch)
			for done := a * batch; done < total; done += appenders * batch {
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
		return nil, err
	default:
	}
	mb := float64(total*payloadSize) / (1 << 20) / el.Seconds()
	ferryRes := Result{Scenario: "append-vs-disk", System: "ferry: batched durable append (payload)", Concurrency: appenders, Messages: total, Seconds: el.Seconds(),
		MsgsPerSec: rate(total, el), MBPerSec: mb, Ratio: mb / diskMB, Note: "ratio: ferry payload MB/s / disk MB/s"}
	return []Result{disk, ferryRes}, nil
}
