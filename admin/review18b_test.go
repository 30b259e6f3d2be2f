package admin

// Review 18b: adversarial tests of the admin API. Each failing test is a
// defect; the comment above it states the guarantee.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
)

// reviewAudits returns the audit records, oldest first.
func reviewAudits(t *testing.T, svc *Service) []AuditRecord {
	t.Helper()
	recs, err := svc.AuditLog(context.Background(), AuditQuery{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// Every non-GET/HEAD/OPTIONS request is audited exactly once, routed or
// not. /api/v1/openapi.json is registered for every method, so a POST,
// PUT, PATCH or DELETE of it is answered 200 with the document and leaves
// no audit record (ServeHTTP sends every request with a pattern other
// than "/" straight to the mux, and the openapi handler never audits).
func TestReview18bMutatingOpenAPIRequestIsNotAudited(t *testing.T) {
	_, svc, h := reviewServer(t, Rule{Verbs: []string{VerbAdmin}, Topics: []string{"*"}, Groups: []string{"*"}})
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		before := len(reviewAudits(t, svc))
		w := reviewDo(t, h, m, "/api/v1/openapi.json", `{}`)
		after := reviewAudits(t, svc)
		if len(after) != before+1 {
			t.Errorf("%s /api/v1/openapi.json: status %d, %d audit record(s) written; want exactly one (verb %q), and 405 with Allow: GET, HEAD",
				m, w.Code, len(after)-before, VerbUnrouted)
		} else if w.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s /api/v1/openapi.json: status %d (Allow %q); want 405", m, w.Code, w.Header().Get("Allow"))
		}
	}
}

// A mutating request whose path the mux cleans (a double slash, "." or
// ".." segments) is answered with a redirect (307) and no audit record:
// the mux's redirect handler comes with the route's pattern, so ServeHTTP
// takes it for routed, and serve never runs. The attempt is not on record.
func TestReview18bRedirectedMutationIsNotAudited(t *testing.T) {
	b, svc, h := reviewServer(t, Rule{Verbs: []string{VerbAdmin}, Topics: []string{"*"}, Groups: []string{"*"}})
	if err := b.EnsureTopic(context.Background(), "orders", 1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/v1//topics", `{"name":"x","partitions":1}`},
		{"DELETE", "/api/v1/topics/./orders", ""},
		{"DELETE", "/api/v1/topics/nope/../ferry.audit", ""},
		{"POST", "/api/v1/dlq/g.dlq/./purge", `{}`},
	} {
		before := len(reviewAudits(t, svc))
		w := reviewDo(t, h, c.method, c.path, c.body)
		if got := len(reviewAudits(t, svc)) - before; got != 1 {
			t.Errorf("%s %s: status %d (Location %q), %d audit record(s); want the attempt audited exactly once",
				c.method, c.path, w.Code, w.Header().Get("Location"), got)
		}
	}
}

// An explicitly empty after= is bad input (a script paging with
// after=$LAST where LAST came out empty): it must be refused with 400,
// not answered with the first page again, which makes such a pager loop
// for ever on a DLQ of more than one page.
func TestReview18bEmptyAfterRestartsPaging(t *testing.T) {
	b, _, h := reviewServer(t, Rule{Verbs: []string{VerbAdmin}, Topics: []string{"*"}})
	reviewDLQ(t, b, "src", "g.dlq")
	for _, q := range []string{"after=", "limit=", "after=&limit=1"} {
		w := reviewDo(t, h, "GET", "/api/v1/dlq/g.dlq/entries?"+q, "")
		if w.Code != http.StatusBadRequest {
			t.Errorf("GET /dlq/g.dlq/entries?%s: %d (the first page, %d bytes); want 400 naming the empty parameter", q, w.Code, w.Body.Len())
		}
	}
}

// An explicitly empty partition= on the tail is bad input: it must be
// refused with 400, not taken for "every partition" (the stream starts,
// 200, on all of them).
func TestReview18bEmptyTailPartitionTailsEverything(t *testing.T) {
	b, _, h := reviewServer(t, Rule{Verbs: []string{VerbRead}, Topics: []string{"*"}})
	if err := b.EnsureTopic(context.Background(), "orders", 3); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, q := range []string{"partition=", "partition=&start=earliest"} {
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/v1/topics/orders/tail?"+q, nil)
		req.Header.Set("Authorization", "Bearer "+reviewToken)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := http.DefaultClient.Do(req) // returns once the headers are flushed
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /topics/orders/tail?%s: %d (%s); want 400: an empty partition is not \"every partition\"", q, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
}

// An unauthenticated mutating request to an unrouted path is audited as
// denied with 401 (like a routed one), not answered 404/405 with the
// route table's Allow header and audited as "failed".
func TestReview18bUnauthenticatedUnroutedIsNot401(t *testing.T) {
	_, svc, h := reviewServer(t, Rule{Verbs: []string{VerbAdmin}, Topics: []string{"*"}})
	before := len(reviewAudits(t, svc))
	req := httptest.NewRequest("PUT", "/api/v1/topics/orders", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	recs := reviewAudits(t, svc)[before:]
	if len(recs) != 1 {
		t.Fatalf("PUT without credentials: %d audit records", len(recs))
	}
	r := recs[0].Data
	if w.Code != http.StatusUnauthorized || r.Result != AuditDenied || r.Status != http.StatusUnauthorized {
		t.Errorf("PUT /api/v1/topics/orders without credentials: %d (Allow %q); audited result %q status %d actor %q; want 401, denied",
			w.Code, w.Header().Get("Allow"), r.Result, r.Status, r.Actor)
	}
}

// Paging through a DLQ that changes meanwhile never skips an entry still
// listed. A DLQ topic of more than one partition is listed partition by
// partition, and "after" compares (partition, offset): an entry
// dead-lettered into partition 0 while the pager is in partition 1 lands
// before the cursor and is never listed, though the DLQ lists it (and
// `dlq list --limit N`, "oldest first", returns partition 0's entries
// before older ones of partition 1).
func TestReview18bPagingSkipsEntryOfEarlierPartition(t *testing.T) {
	b := newTestBackend(t)
	svc := NewService(b)
	ctx := context.Background()
	for topic, n := range map[string]int{"src": 1, "g.dlq": 2} {
		if err := b.EnsureTopic(ctx, topic, n); err != nil {
			t.Fatal(err)
		}
	}
	i := 0
	add := func() int32 { // dead-letters one message; returns the DLQ partition of its entry
		i++
		m := &ferry.Message{ID: ferry.NewID(), Topic: "src", Key: []byte(fmt.Sprintf("k%d", i)), Payload: []byte("p")}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		e := dlq.NewEntry(m, "g.dlq", dlq.Failure{Group: "g", Handler: "h", Attempts: 1, First: now, Last: now, Err: errors.New("boom"), Class: "permanent"})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		return e.Partition
	}
	in := map[int32]int{}
	for in[0] < 3 || in[1] < 3 {
		in[add()]++
	}
	seen := map[string]bool{}
	page := Page{Limit: in[0] + 1} // the first page ends in partition 1
	rows, err := svc.DeadLetters(ctx, "g.dlq", Filter{}, page)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		seen[r.ID] = true
	}
	for add() != 0 { // a new entry in partition 0, meanwhile
	}
	for page.After = rows[len(rows)-1].Position; ; page.After = rows[len(rows)-1].Position {
		if rows, err = svc.DeadLetters(ctx, "g.dlq", Filter{}, page); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			seen[r.ID] = true
		}
		if len(rows) < page.Limit {
			break
		}
	}
	all, err := svc.DeadLetters(ctx, "g.dlq", Filter{}, Page{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if !seen[r.ID] {
			t.Errorf("entry %s at %s (dead-lettered while paging) is listed, but paging never returned it", r.ID, r.Position)
		}
	}
}
