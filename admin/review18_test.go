package admin

// Regression tests of an adversarial review of the admin API: each
// failed before its fix.

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/dlq"
)

const reviewToken = "review-token-0123456789"

// reviewServer returns a handler whose only token (reviewToken) has rules.
func reviewServer(t *testing.T, rules ...Rule) (*embedded.Backend, *Service, http.Handler) {
	t.Helper()
	b := newTestBackend(t)
	svc := NewService(b)
	h, err := bcrypt.GenerateFromPassword([]byte(reviewToken), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuth(AuthConfig{Tokens: []TokenConfig{{Name: "t", Hash: string(h), Roles: []string{"r"}}},
		Roles: map[string][]Rule{"r": rules}})
	if err != nil {
		t.Fatal(err)
	}
	return b, svc, NewHandler(svc, auth)
}

func reviewDo(t *testing.T, h http.Handler, method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	} else {
		rd = strings.NewReader("")
	}
	req := httptest.NewRequest(method, path, rd)
	req.Header.Set("Authorization", "Bearer "+reviewToken)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func reviewAuditCount(t *testing.T, svc *Service) int {
	t.Helper()
	recs, err := svc.AuditLog(context.Background(), AuditQuery{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

// reviewDLQ creates topic src (1 partition) and DLQ topic q with one dead entry of key k.
func reviewDLQ(t *testing.T, b *embedded.Backend, src, q string) ferry.ID {
	t.Helper()
	ctx := context.Background()
	for _, tp := range []string{src, q} {
		if err := b.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	m := &ferry.Message{ID: ferry.NewID(), Topic: src, Key: []byte("k"), Payload: []byte("p")}
	if err := b.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	e := dlq.NewEntry(m, q, dlq.Failure{Group: "g", Handler: "h", Attempts: 1, First: now, Last: now, Err: errors.New("boom"), Class: "permanent"})
	if err := b.Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// 1. A message with NotBefore in the future makes browse/search/message/replay hang.
func TestReviewDelayedMessageHangsBrowse(t *testing.T) {
	b := newTestBackend(t)
	svc := NewService(b)
	ctx := context.Background()
	if err := b.EnsureTopic(ctx, "t", 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, &ferry.Message{ID: ferry.NewID(), Topic: "t", Payload: []byte("later"), NotBefore: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	k := "x"
	for name, op := range map[string]func(context.Context) error{
		"Messages": func(ctx context.Context) error { _, err := svc.Messages(ctx, "t", 0, "", 10); return err },
		"Message":  func(ctx context.Context) error { _, err := svc.Message(ctx, "t", 0, 0); return err },
		"Search":   func(ctx context.Context) error { _, err := svc.Search(ctx, "t", Search{Key: &k}); return err },
		"Replay":   func(ctx context.Context) error { _, err := svc.Replay(ctx, Replay{From: "t", To: "t2"}); return err },
	} {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := op(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: blocked until the deadline on a not-yet-due message at offset 0 (offset < end): %v", name, err)
		}
	}
}

// 2. Streamed redrive: bad input after the stream started answers 200.
func TestReviewStreamedRedriveBadInputIs200(t *testing.T) {
	b, _, h := reviewServer(t, Rule{Verbs: []string{VerbAdmin}, Topics: []string{"*"}})
	reviewDLQ(t, b, "src", "g.dlq")
	for _, c := range []struct{ path, body string }{
		{"/api/v1/dlq/g.dlq/redrive", `{"per_second":-1}`},
		{"/api/v1/dlq/nope.dlq/redrive", `{}`},
		{"/api/v1/dlq/g.dlq/redrive", `{"to":"ferry.audit"}`},
	} {
		w := reviewDo(t, h, "POST", c.path, c.body, "Accept", "text/event-stream")
		if w.Code == http.StatusOK {
			t.Errorf("POST %s %s (Accept: text/event-stream): status 200 with body %q; want a 4xx before the stream starts", c.path, c.body, w.Body.String())
		}
	}
}

// 3. Group reset checks the group only: offsets move on a topic the token has no verb on.
func TestReviewResetGroupIgnoresTopicPermission(t *testing.T) {
	b, _, h := reviewServer(t, Rule{Verbs: []string{VerbReset}, Groups: []string{"g"}})
	ctx := context.Background()
	if err := b.EnsureTopic(ctx, "secret", 1); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, &ferry.Message{ID: ferry.NewID(), Topic: "secret", Payload: []byte("x")})
	w := reviewDo(t, h, "POST", "/api/v1/groups/g/reset", `{"topic":"secret","to":"latest"}`)
	if w.Code != http.StatusForbidden {
		t.Errorf("reset of group g on topic secret (token: reset on group g, nothing on any topic): %d %s; want 403", w.Code, w.Body.String())
	}
}

// 6. The audit record is written with the request's context: a client that
// disconnects after the mutation leaves no record.
type reviewCancelWriter struct {
	*httptest.ResponseRecorder
	cancel context.CancelFunc
}

func (w reviewCancelWriter) Write(p []byte) (int, error) {
	w.cancel()
	return w.ResponseRecorder.Write(p)
}

func TestReviewDisconnectSkipsAudit(t *testing.T) {
	b, svc, h := reviewServer(t, Rule{Verbs: []string{VerbAdmin}, Topics: []string{"*"}})
	reviewDLQ(t, b, "src", "g.dlq")
	before := reviewAuditCount(t, svc)
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("POST", "/api/v1/dlq/g.dlq/redrive", bytes.NewReader([]byte(`{}`))).WithContext(ctx)
	req.Header.Set("Authorization", "Bearer "+reviewToken)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Content-Type", "application/json")
	w := reviewCancelWriter{httptest.NewRecorder(), cancel} // the client goes away after the first event
	h.ServeHTTP(w, req)
	got, err := svc.DeadLetters(context.Background(), "g.dlq", Filter{State: dlq.StateRequested}, Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("redrive did not happen: %v", got)
	}
	if n := reviewAuditCount(t, svc); n == before {
		t.Errorf("the redrive requested %d entr(ies) but no audit record was written (Record uses the cancelled request context)", len(got))
	}
}

// 9. Without Auth (loopback default) a cross-site "simple" request mutates:
// no Content-Type check, no Origin/Host check (CSRF, DNS rebinding).
func TestReviewCrossSiteSimpleRequestMutates(t *testing.T) {
	b := newTestBackend(t)
	svc := NewService(b)
	h := NewHandler(svc, nil)
	b.EnsureTopic(context.Background(), "orders", 1)
	// A browser form / fetch(mode:"no-cors") from any web page the operator visits:
	req := httptest.NewRequest("POST", "/api/v1/topics/orders/messages", strings.NewReader(`{"messages":[{"payload":"forged"}]}`))
	req.Host = "evil.example:8080" // DNS rebinding
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Origin", "https://evil.example")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code == http.StatusOK {
		t.Errorf("cross-origin text/plain POST (Origin https://evil.example, Host evil.example) produced a message: %d %s; want 415/403", w.Code, w.Body.String())
	}
}

// 10. redrive --to the entries' own source topic appends the key's dead
// messages after later messages of the key that are still unconsumed, and
// releases the key: the later ones overtake them.
func TestReviewRedriveToSourceTopicOvertakes(t *testing.T) {
	b := newTestBackend(t)
	svc := NewService(b)
	ctx := context.Background()
	reviewDLQ(t, b, "src", "g.dlq") // m1 (key k) at src/0@0, dead
	m3 := &ferry.Message{ID: ferry.NewID(), Topic: "src", Key: []byte("k"), Payload: []byte("m3")}
	if err := b.Publish(ctx, m3); err != nil { // a later message of k, not consumed yet
		t.Fatal(err)
	}
	res, err := svc.Redrive(ctx, "g.dlq", Redrive{To: "src"}, nil)
	if err == nil {
		page, _ := svc.Messages(ctx, "src", 0, "", 10)
		var order []string
		for _, m := range page.Messages {
			order = append(order, m.Payload)
		}
		left, _ := svc.DeadLetters(ctx, "g.dlq", Filter{}, Page{})
		t.Errorf("redrive --to src (the entries' source) moved %d: src now reads %v and %d entries of key k are left parked: m3 is handled before the copy of m1; want it refused (ErrInvalidArgument) or done by request markers", res.Entries, order, len(left))
	}
}
