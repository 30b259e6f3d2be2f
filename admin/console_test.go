package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/vfs"
)

// consoleClient is a browser's view of the console: a cookie jar, and the
// headers a browser adds to a request of a page of origin (empty: no
// browser headers, as curl or the CLI send).
type consoleClient struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func newConsoleClient(t *testing.T, base string) *consoleClient {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &consoleClient{t: t, base: base, hc: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

// do sends a request; origin, if set, is sent as a browser would send a
// request made by a page of that origin (Origin, Sec-Fetch-Site).
func (c *consoleClient) do(method, path, contentType, body, origin string, headers map[string]string) *http.Response {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
		site := "cross-site"
		if origin == c.base {
			site = "same-origin"
		}
		req.Header.Set("Sec-Fetch-Site", site)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (c *consoleClient) login(token string) *http.Response {
	c.t.Helper()
	return c.do("POST", "/ui/login", "application/x-www-form-urlencoded", url.Values{"token": {token}}.Encode(), c.base, nil)
}

func (c *consoleClient) session() Session {
	c.t.Helper()
	resp := c.do("GET", "/ui/session", "", "", c.base, nil)
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("GET /ui/session: %s", resp.Status)
	}
	var s Session
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

func TestConsoleLoginKeepsTheTokenInAnHTTPOnlySameSiteCookie(t *testing.T) {
	f := newFixture(t)
	c := newConsoleClient(t, f.srv.URL)
	if resp := c.do("GET", "/ui/session", "", "", c.base, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("session before login: %s", resp.Status)
	}
	resp := c.login(tokenOf("ops"))
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != ConsolePath {
		t.Fatalf("login: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" || cookie.MaxAge != int(SessionTTL/time.Second) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, Max-Age %v", cookie, SessionTTL)
	}
	s := c.session()
	if s.Name != "ops" || s.Method != "console" || s.CSRF == "" || !s.Auth {
		t.Fatalf("session %+v", s)
	}
	// The session reads the API as ops.
	resp = c.do("GET", Prefix+"/access?topic=billing.dlq", "", "", c.base, nil)
	var a Access
	if json.NewDecoder(resp.Body).Decode(&a); resp.StatusCode != 200 || a.Name != "ops" || !slices.Equal(a.TopicVerbs, []string{VerbRead, VerbProduce, VerbRedrive, VerbPurge}) {
		t.Fatalf("access: %s %+v", resp.Status, a)
	}
	// A wrong token is refused with the page, and audited.
	bad := newConsoleClient(t, f.srv.URL)
	resp = bad.login("not-a-token-0123456789")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "matches no token") || len(resp.Cookies()) != 0 {
		t.Fatalf("bad login: %s %v %s", resp.Status, resp.Cookies(), body)
	}
	var logins []string
	for _, r := range f.audit(t) {
		if r.Data.Verb == VerbLogin {
			logins = append(logins, r.Data.Actor+" "+r.Data.Result)
		}
	}
	if want := []string{"ops ok", "unauthenticated denied"}; !slices.Equal(logins, want) {
		t.Fatalf("login records %q, want %q", logins, want)
	}
}

// TestConsoleMutationsNeedTheCSRFTokenAndTheSameOrigin: a console
// session's mutating request without its CSRF token, with a wrong one, or
// sent by a page of another site (with or without the token, form or
// JSON) is refused, audited, and changes nothing; with the token from the
// same origin it is done. Bearer-token callers (no browser headers) are
// unaffected.
func TestConsoleMutationsNeedTheCSRFTokenAndTheSameOrigin(t *testing.T) {
	f := newFixture(t)
	c := newConsoleClient(t, f.srv.URL)
	c.login(tokenOf("ops"))
	csrf := c.session().CSRF
	purge := `{"filter":{}}`
	refused := []struct {
		name, ctype, body, origin string
		headers                   map[string]string
	}{
		{"no CSRF token", "application/json", purge, c.base, nil},
		{"a wrong CSRF token", "application/json", purge, c.base, map[string]string{CSRFHeader: csrfToken("another-token-0123456789")}},
		{"another site, with the token", "application/json", purge, "https://evil.example", map[string]string{CSRFHeader: csrf}},
		{"a forged form", "text/plain", `{"filter":{},"x":"="}`, "https://evil.example", nil},
		{"a forged urlencoded form", "application/x-www-form-urlencoded", "filter=", "http://127.0.0.1:1", nil},
	}
	for _, r := range refused {
		resp := c.do("POST", Prefix+"/dlq/billing.dlq/purge", r.ctype, r.body, r.origin, r.headers)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %s, want 403", r.name, resp.Status)
		}
	}
	if got := f.states(t); !slices.Equal(got, []string{"dead", "dead"}) {
		t.Fatalf("after the refused purges the entries are %q", got)
	}
	var denied int
	for _, r := range f.audit(t) {
		if r.Data.Verb == VerbPurge && r.Data.Result == AuditDenied && r.Data.Auth == "console" && r.Data.Actor == "ops" {
			denied++
		}
	}
	if denied != len(refused) {
		t.Fatalf("%d denied purges audited, want %d", denied, len(refused))
	}
	// A forged login form from another site is refused too (login CSRF).
	other := newConsoleClient(t, f.srv.URL)
	if resp := other.do("POST", "/ui/login", "application/x-www-form-urlencoded", "token="+tokenOf("root"), "https://evil.example", nil); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("cross-site login: %s %v", resp.Status, resp.Cookies())
	}

	// With the token, from the console's own origin: done.
	resp := c.do("POST", Prefix+"/dlq/billing.dlq/purge", "application/json", purge, c.base, map[string]string{CSRFHeader: csrf})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("purge with the CSRF token: %s", resp.Status)
	}
	if got := f.states(t); !slices.Equal(got, []string{"purged", "purged"}) {
		t.Fatalf("after the purge the entries are %q", got)
	}
	// A bearer token needs no CSRF token (no cookie, no browser).
	if _, err := f.client(t, tokenOf("ops")).Produce(context.Background(), "orders", []Message{{Payload: "x"}}); err != nil {
		t.Fatalf("produce with a bearer token: %v", err)
	}

	// Logging out needs the token too, then clears the cookie.
	if resp := c.do("POST", "/ui/logout", "", "", c.base, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without the CSRF token: %s", resp.Status)
	}
	if resp := c.do("POST", "/ui/logout", "", "", c.base, map[string]string{CSRFHeader: csrf}); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %s", resp.Status)
	}
	if resp := c.do("GET", Prefix+"/topics", "", "", c.base, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %s", resp.Status)
	}
}

func TestConsolePagesAreServedWithTheirPolicy(t *testing.T) {
	f := newFixture(t)
	c := newConsoleClient(t, f.srv.URL)
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/style.css", "/ui/login"} {
		resp := c.do("GET", path, "", "", "", nil)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || len(body) == 0 || resp.Header.Get("Content-Security-Policy") != consoleCSP ||
			resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %s, headers %v", path, resp.Status, resp.Header)
		}
	}
	if resp := c.do("GET", "/", "", "", "", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != ConsolePath {
		t.Fatalf("GET /: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	if resp := c.do("GET", "/ui/nosuch.js", "", "", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /ui/nosuch.js: %s", resp.Status)
	}
}

// TestConsoleWithoutAuth: with no access file everyone is anonymous; the
// console needs no login, and another site's page still cannot change
// anything.
func TestConsoleWithoutAuth(t *testing.T) {
	f := newFixture(t)
	srv := f.srv
	srv.Config.Handler = NewHandler(f.svc, nil)
	c := newConsoleClient(t, srv.URL)
	if s := c.session(); s.Name != "anonymous" || s.Auth || s.CSRF != "" {
		t.Fatalf("session %+v", s)
	}
	if resp := c.do("POST", Prefix+"/dlq/billing.dlq/purge", "application/json", `{"filter":{}}`, "http://evil.example", nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site purge without auth: %s", resp.Status)
	}
	if got := f.states(t); !slices.Equal(got, []string{"dead", "dead"}) {
		t.Fatalf("after the refused purge the entries are %q", got)
	}
	if resp := c.do("POST", Prefix+"/dlq/billing.dlq/purge", "application/json", `{"filter":{}}`, c.base, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("same-origin purge without auth: %s", resp.Status)
	}
}

func TestDLQSummaryCountsByStateAndClass(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	got, err := f.client(t, tokenOf("reader")).DLQs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []DLQSummary{{Queue: "billing.dlq", Group: "billing", Dead: 2, Classes: map[string]int{"permanent": 1, "parked": 1}}}
	if !equalJSON(got, want) {
		t.Fatalf("DLQs = %+v, want %+v", got, want)
	}
	if _, err := f.svc.Redrive(ctx, "billing.dlq", Redrive{}, nil); err != nil {
		t.Fatal(err)
	}
	got, _ = f.svc.DLQs(ctx)
	if len(got) != 1 || got[0].Dead != 0 || got[0].Requested != 2 {
		t.Fatalf("after a redrive: %+v", got)
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// TestLagHistoryIsABoundedRingSampledEachInterval runs RecordLag on a
// fake clock: a sample at the start and one per interval, oldest first,
// at most MaxLagSamples, following the lag as messages arrive and are
// committed; a group that goes is dropped.
func TestLagHistoryIsABoundedRingSampledEachInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b := newTestBackend(t)
		if err := b.EnsureTopic(ctx, "orders", 1); err != nil {
			t.Fatal(err)
		}
		tp := backend.TopicPartition{Topic: "orders"}
		if err := b.SetCommitted(ctx, "billing", backend.Offset{TopicPartition: tp, Offset: 0}); err != nil {
			t.Fatal(err)
		}
		svc := NewService(b)
		if h := svc.LagHistory("billing"); h.Interval != "" || len(h.Samples) != 0 {
			t.Fatalf("before RecordLag: %+v", h)
		}
		done := make(chan error, 1)
		go func() { done <- svc.RecordLag(ctx, time.Second) }()
		synctest.Wait()
		if err := svc.RecordLag(ctx, time.Second); err == nil {
			t.Fatal("a second RecordLag was started")
		}
		lags := []uint64{0}
		for i := range MaxLagSamples + 20 {
			if err := b.Publish(ctx, &ferry.Message{Topic: "orders", Payload: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			if i%3 == 0 {
				if err := b.SetCommitted(ctx, "billing", backend.Offset{TopicPartition: tp, Offset: uint64(i)}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(time.Second)
			synctest.Wait()
			lags = append(lags, uint64(i+1-i/3*3))
		}
		h := svc.LagHistory("billing")
		if h.Interval != "1s" || len(h.Samples) != MaxLagSamples {
			t.Fatalf("history: interval %q, %d samples, want 1s and %d", h.Interval, len(h.Samples), MaxLagSamples)
		}
		want := lags[len(lags)-MaxLagSamples:]
		for i, s := range h.Samples {
			if s.Lag != want[i] || len(s.Partitions) != 1 || s.Partitions[0].Lag != want[i] {
				t.Fatalf("sample %d: %+v, want lag %d", i, s, want[i])
			}
			if i > 0 && s.Time.Sub(h.Samples[i-1].Time) != time.Second {
				t.Fatalf("samples %d and %d are %v apart, want 1s", i-1, i, s.Time.Sub(h.Samples[i-1].Time))
			}
		}
		// The group goes: its history does too.
		if err := svc.DeleteGroup(ctx, "billing", false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if h := svc.LagHistory("billing"); len(h.Samples) != 0 {
			t.Fatalf("after the group was deleted: %d samples", len(h.Samples))
		}
		cancel()
		if err := <-done; err != context.Canceled {
			t.Fatalf("RecordLag returned %v", err)
		}
	})
}

// TestConsoleRefusesTwoSessionCookies: cookies are not kept apart by
// port, so a page of another port of this host can set a second session
// cookie (with the attacker's token, for a narrower path) to make the
// console act as the attacker. A request carrying two is refused.
func TestConsoleRefusesTwoSessionCookies(t *testing.T) {
	f := newFixture(t)
	req, _ := http.NewRequest("GET", f.srv.URL+Prefix+"/topics", nil)
	req.AddCookie(&http.Cookie{Name: SessionCookie, Value: tokenOf("reader")})
	req.AddCookie(&http.Cookie{Name: SessionCookie, Value: tokenOf("ops")})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "2 ferry_session cookies sent, want one") {
		t.Fatalf("two session cookies: %s %s", resp.Status, body)
	}
}

// TestHealthIsDegradedWhenTheLogFailed: after a failed fsync the log
// refuses every append until reopened; the API's health (and so the
// console's overview) says so, with the log's error.
func TestHealthIsDegradedWhenTheLogFailed(t *testing.T) {
	ctx := context.Background()
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	l, err := commitlog.Open(ctx, "/log", commitlog.WithFS(ffs))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := embedded.New(l)
	defer b.Close()
	if err := b.EnsureTopic(ctx, "t", 1); err != nil {
		t.Fatal(err)
	}
	svc := NewService(b)
	if h, err := svc.Health(ctx); err != nil || h.Status != "ok" {
		t.Fatalf("health of a working log: %+v, %v", h, err)
	}
	ffs.SetInjector(func(op vfs.Op, _ string, _ int64) error {
		if op == vfs.OpSync {
			return vfs.EIO
		}
		return nil
	})
	if err := b.Publish(ctx, &ferry.Message{Topic: "t", Payload: []byte("lost")}); err == nil {
		t.Fatal("an append whose fsync failed was acknowledged")
	}
	h, err := svc.Health(ctx)
	if err != nil || h.Status != "degraded" || len(h.Problems) == 0 || !strings.Contains(h.Problems[0], "backend: ") {
		t.Fatalf("health after the log failed: %+v, %v", h, err)
	}
}

// TestUnknownTokensAreRateLimited: every token not verified before costs
// a bcrypt comparison with each token of the access file, so trying
// tokens is bounded (429, Retry-After) while a token verified before
// still gets in at once.
func TestUnknownTokensAreRateLimited(t *testing.T) {
	f := newFixture(t)
	// The limiter's clock stands still, so the burst is the bound: on a
	// loaded machine (bcrypt under -race) 40 guesses took 11 s, long
	// enough to refill the limiter mid-burst.
	a := fixtureAuth(t)
	frozen := time.Now()
	a.now = func() time.Time { return frozen }
	f.srv = httptest.NewServer(NewHandler(f.svc, a))
	t.Cleanup(f.srv.Close)
	ctx := context.Background()
	if _, err := f.client(t, tokenOf("reader")).Topics(ctx); err != nil {
		t.Fatal(err)
	}
	limited := 0
	for i := range 2 * unknownBurst {
		_, err := f.client(t, fmt.Sprintf("guess-%d-0123456789abcdef", i)).Topics(ctx)
		var ae *APIError
		switch {
		case errors.Is(err, ErrTooManyAttempts) && errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests:
			limited++
		case !errors.Is(err, ErrUnauthenticated):
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if limited < unknownBurst/2 {
		t.Fatalf("%d of %d guesses in a burst were limited, want most beyond the first %d", limited, 2*unknownBurst, unknownBurst)
	}
	if _, err := f.client(t, tokenOf("reader")).Topics(ctx); err != nil {
		t.Fatalf("a token verified before, during the limit: %v", err)
	}
	resp := newConsoleClient(t, f.srv.URL).login("guess-login-0123456789abcdef")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a login during the limit: %s %v", resp.Status, resp.Header)
	}
}
