package commitlog

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ferrymq/ferry"
)

// verifier is the one checker every safety test uses. Producers write
// unique (producer, sequence) payloads keyed by producer; an append counts
// as acknowledged only when it returned success.
type verifier struct {
	mu    sync.Mutex
	acked map[ferry.ID]ackedMsg
	sent  map[string]bool // every payload ever attempted
}

type ackedMsg struct {
	partition int32
	offset    uint64
	payload   string
}

func newVerifier() *verifier {
	return &verifier{acked: map[ferry.ID]ackedMsg{}, sent: map[string]bool{}}
}

func payloadFor(producer, seq int) string { return fmt.Sprintf("p%d-%d", producer, seq) }

func parsePayload(p string) (producer, seq int, ok bool) {
	a, b, found := strings.Cut(strings.TrimPrefix(p, "p"), "-")
	if !found {
		return 0, 0, false
	}
	x, err1 := strconv.Atoi(a)
	y, err2 := strconv.Atoi(b)
	return x, y, err1 == nil && err2 == nil
}

func (v *verifier) attempt(payload string) {
	v.mu.Lock()
	v.sent[payload] = true
	v.mu.Unlock()
}

func (v *verifier) ack(m *ferry.Message) {
	v.mu.Lock()
	v.acked[m.ID] = ackedMsg{m.Partition, m.Offset, string(m.Payload)}
	v.mu.Unlock()
}

// check reads every partition of topic and reports any violation: an
// acknowledged message missing or moved, a message never written, an ID at
// two offsets, or a producer's sequence out of order within a partition.
func (v *verifier) check(t testing.TB, l *Log, topic string) (found int) {
	t.Helper()
	info, err := l.Topic(topic)
	if err != nil {
		if len(v.acked) == 0 {
			return 0
		}
		t.Fatalf("topic %s missing with %d acknowledged messages: %v", topic, len(v.acked), err)
	}
	seen := map[ferry.ID]ackedMsg{}
	for p := range info.Partitions {
		lastSeq := map[int]int{}
		for _, m := range readAll(t, l, topic, int32(p)) {
			pl := string(m.Payload)
			if !v.sent[pl] {
				t.Fatalf("read %q at %d/%d, which was never written", pl, p, m.Offset)
			}
			if prev, dup := seen[m.ID]; dup {
				t.Fatalf("message %s at %d/%d and again at %d/%d", m.ID, prev.partition, prev.offset, p, m.Offset)
			}
			seen[m.ID] = ackedMsg{int32(p), m.Offset, pl}
			prod, seq, _ := parsePayload(pl)
			if last, ok := lastSeq[prod]; ok && seq <= last {
				t.Fatalf("partition %d: producer %d sequence %d after %d", p, prod, seq, last)
			}
			lastSeq[prod] = seq
		}
	}
	var missing []string
	for id, a := range v.acked {
		if got, ok := seen[id]; !ok || got != a {
			missing = append(missing, fmt.Sprintf("%s (%s at %d/%d, found %+v)", id, a.payload, a.partition, a.offset, got))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("%d acknowledged messages lost or moved, e.g. %s", len(missing), missing[0])
	}
	return len(seen)
}
