package admin

// Review 20: defects of the web console's server side and of the routes
// it added (/dlq, /groups/{group}/lag, the session cookie). Each test
// fails on the code as reviewed and passes once the defect is fixed.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// TestReview20LogoutFromAnotherSiteIsRefused: a page of another site
// posts a form to /ui/logout. SameSite=Strict keeps the session cookie
// off that request, so logout sees no credentials (ErrUnauthenticated),
// skips checkOrigin, and answers 204 with a Set-Cookie that deletes the
// session: logout CSRF, although logout claims to be a mutating request
// that needs the CSRF token and the cross-origin check refuses it.
func TestReview20LogoutFromAnotherSiteIsRefused(t *testing.T) {
	f := newFixture(t)
	evil := newConsoleClient(t, f.srv.URL) // the victim's browser, on evil.example: the Strict cookie stays home
	resp := evil.do("POST", "/ui/logout", "application/x-www-form-urlencoded", "", "https://evil.example", nil)
	var cleared bool
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie && ck.MaxAge < 0 {
			cleared = true
		}
	}
	if resp.StatusCode != http.StatusForbidden || cleared {
		t.Fatalf("a logout form posted from another site: %s, cookie cleared %v; want 403 and the cookie left alone", resp.Status, cleared)
	}
	var rec *AuditRecord
	for _, r := range f.audit(t) {
		if r.Data.Verb == VerbLogout {
			rec = &r
		}
	}
	if rec == nil || rec.Data.Result != AuditDenied {
		t.Fatalf("the cross-site logout's audit record: %+v, want denied", rec)
	}
}

// failingFetch is a backend whose reads of one topic fail.
type failingFetch struct {
	*embedded.Backend
	topic   string
	fetches atomic.Int64
}

func (b *failingFetch) Fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	if tp.Topic == b.topic {
		b.fetches.Add(1)
		return backend.Fetched{}, errors.New("disk on fire")
	}
	return b.Backend.Fetch(ctx, tp, offset, max)
}

// TestReview20DLQSummaryOnlyReadsTheQueuesTheCallerMayRead: GET /dlq
// reads every DLQ topic whole and only then drops the ones the caller
// may not read. So a caller allowed to read billing.dlq alone (1) makes
// the server read every other DLQ (a cheap amplification: the console's
// group page asks every 5 s), and (2) gets a 500 naming secret.dlq, a
// queue it may not even know of, when that queue cannot be read.
func TestReview20DLQSummaryOnlyReadsTheQueuesTheCallerMayRead(t *testing.T) {
	ctx := context.Background()
	b := &failingFetch{Backend: newTestBackend(t), topic: "secret.dlq"}
	for _, topic := range []string{"orders", "billing.dlq", "secret.dlq"} {
		if err := b.EnsureTopic(ctx, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	for _, q := range []string{"billing.dlq", "secret.dlq"} {
		m := &ferry.Message{Topic: "orders", Key: []byte("k"), Payload: []byte("x")}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		e := dlq.NewEntry(m, q, dlq.Failure{Group: strings.TrimSuffix(q, ".dlq"), Handler: "h", Attempts: 1, First: now, Last: now, Err: errors.New("poison"), Class: retry.ClassPermanent})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := bcrypt.GenerateFromPassword([]byte(tokenOf("narrow")), bcrypt.MinCost)
	auth, err := NewAuth(AuthConfig{Tokens: []TokenConfig{{Name: "narrow", Hash: string(h), Roles: []string{"narrow"}}},
		Roles: map[string][]Rule{"narrow": {{Verbs: []string{VerbRead}, Topics: []string{"billing.dlq"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(NewService(b), auth))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+Prefix+"/dlq", nil)
	req.Header.Set("Authorization", "Bearer "+tokenOf("narrow"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Contains(string(body), "secret") {
		t.Errorf("GET /dlq for a caller that may read billing.dlq alone: %s %s\nwant 200 with billing.dlq, and no word of secret.dlq", resp.Status, body)
	}
	if n := b.fetches.Load(); n != 0 {
		t.Errorf("GET /dlq read secret.dlq %d time(s) for a caller that may not read it", n)
	}
}

// TestReview20PurgeOfResolvedEntriesCountsWhatItChanged: the console's
// state filter offers "redriven" and "purged", and its Purge button works
// on them. dlq.Queue.Purge lists the entries of that state and writes a
// purged marker for each, which the queue ignores (redriven and purged
// are final), and reports them all as purged: "Purged 2 entries", and
// "purged 2" in the audit log, for a purge that changed nothing.
func TestReview20PurgeOfResolvedEntriesCountsWhatItChanged(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if err := f.b.EnsureTopic(ctx, "replayed", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Redrive(ctx, "billing.dlq", Redrive{To: "replayed"}, nil); err != nil {
		t.Fatal(err)
	}
	before := f.states(t)
	if strings.Join(before, ",") != "redriven,redriven" {
		t.Fatalf("setup: states %q", before)
	}
	res, err := f.client(t, tokenOf("ops")).Purge(ctx, "billing.dlq", Purge{Filter: Filter{State: dlq.StateRedriven}})
	after := f.states(t)
	if strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("states changed from %q to %q", before, after)
	}
	if err == nil && res.Purged != 0 {
		t.Fatalf("a purge of redriven entries reports %d purged; they are still %q (want 0, or the filter refused)", res.Purged, after)
	}
}

// TestReview20LagHistoryIsForgottenWhenRecordLagEnds: LagHistory says "no
// samples if it [RecordLag] does not run", but the ring outlives
// RecordLag: after it ends the samples are still served (interval ""),
// and a RecordLag restarted at another interval serves the old
// interval's samples under the new interval, so the console's chart
// joins them with a straight line over the gap and its note states the
// wrong pace. A RecordLag started with a context already done also
// records a sample.
func TestReview20LagHistoryIsForgottenWhenRecordLagEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBackend(t)
		bg := context.Background()
		if err := b.EnsureTopic(bg, "orders", 1); err != nil {
			t.Fatal(err)
		}
		tp := backend.TopicPartition{Topic: "orders"}
		if err := b.SetCommitted(bg, "billing", backend.Offset{TopicPartition: tp}); err != nil {
			t.Fatal(err)
		}
		svc := NewService(b)

		done, cancel := context.WithCancel(bg)
		cancel()
		if err := svc.RecordLag(done, time.Second); !errors.Is(err, context.Canceled) {
			t.Fatalf("RecordLag with a done context: %v", err)
		}
		if h := svc.LagHistory("billing"); len(h.Samples) != 0 {
			t.Errorf("a RecordLag whose context was done already recorded %d sample(s)", len(h.Samples))
		}

		ctx, cancel := context.WithCancel(bg)
		ended := make(chan error, 1)
		go func() { ended <- svc.RecordLag(ctx, time.Second) }()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		cancel()
		<-ended
		if h := svc.LagHistory("billing"); len(h.Samples) != 0 {
			t.Errorf("RecordLag has ended; LagHistory still serves %d sample(s) (interval %q)", len(h.Samples), h.Interval)
		}

		time.Sleep(time.Hour) // the process samples nothing for an hour
		ctx, cancel = context.WithCancel(bg)
		defer cancel()
		go svc.RecordLag(ctx, time.Minute)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		h := svc.LagHistory("billing")
		every, _ := time.ParseDuration(h.Interval)
		for i := 1; i < len(h.Samples); i++ {
			if gap := h.Samples[i].Time.Sub(h.Samples[i-1].Time); gap != every {
				t.Errorf("restarted every %s, the history holds samples %d and %d %v apart", h.Interval, i-1, i, gap)
			}
		}
		cancel()
	})
}

// TestReview20ConsoleSessionWithAnUnlistedClientCertificate: over TLS a
// browser may present a client certificate the access file does not
// name (one the server's CA signed for something else). Authenticate
// falls back to an Authorization header then, but not to the console's
// cookie: the login succeeds and sets the cookie, and every request after
// it is 401, which the console answers by going back to the login page:
// a login loop.
func TestReview20ConsoleSessionWithAnUnlistedClientCertificate(t *testing.T) {
	b := newTestBackend(t)
	ca, serverCert, clientCert := certs(t) // the client is CN=ops, which the file below does not list
	srv := httptest.NewUnstartedServer(NewHandler(NewService(b), fixtureAuth(t)))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca, Certificates: []tls.Certificate{clientCert}}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("POST", srv.URL+"/ui/login", strings.NewReader(url.Values{"token": {tokenOf("reader")}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %s", resp.Status)
	}
	resp, err = hc.Get(srv.URL + "/ui/session")
	if err != nil {
		t.Fatal(err)
	}
	var s Session
	json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || s.Name != "reader" {
		t.Fatalf("GET /ui/session after a successful login, with an unlisted client certificate: %s %+v; want 200 as reader", resp.Status, s)
	}
}
