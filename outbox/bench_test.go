package outbox

import (
	"context"
	"fmt"
	"testing"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/testsvc"
)

// BenchmarkRelay measures relay throughput: b.N outbox rows (256-byte
// payloads over 1,000 keys, added before the timer starts) published to
// the embedded log on disk with durability always (fsync before the rows
// are marked sent), by one relay at several batch sizes.
//
//	go test ./outbox -run '^$' -bench Relay -benchtime 50000x
func BenchmarkRelay(b *testing.B) {
	for _, batch := range []int{100, 500, 2000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			pool, _ := testsvc.Postgres(b)
			if err := Migrate(ctx, pool); err != nil {
				b.Fatal(err)
			}
			o := New(pool)
			payload := make([]byte, 256)
			for i := 0; i < b.N; i += 1000 {
				msgs := make([]*ferry.Message, 0, 1000)
				for j := i; j < min(b.N, i+1000); j++ {
					msgs = append(msgs, &ferry.Message{Topic: topic, Key: fmt.Appendf(nil, "k%d", j%1000), Payload: payload})
				}
				addInTx(b, pool, o, msgs...)
			}
			l, err := commitlog.Open(ctx, b.TempDir(), commitlog.WithDurability(commitlog.DurabilityAlways))
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			be := embedded.New(l)
			defer be.Close()
			be.EnsureTopic(ctx, topic, 8)
			r := o.NewRelay(be, WithBatchSize(batch))
			b.ResetTimer()
			sent := 0
			for sent < b.N {
				n, err := r.RelayOnce(ctx)
				if err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			b.StopTimer()
			b.ReportMetric(float64(sent)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
