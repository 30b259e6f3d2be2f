package main

// Review 20: defects of the web console a browser shows. Each test runs
// the admin handler in this process over an embedded log holding key k's
// poison message and the message parked behind it in billing.dlq, and
// drives the console in headless Chromium.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

const review20Token = "ops-review20-token-0123456789"

// review20Console serves the console over a fresh log; wrap, if set,
// wraps its handler.
func review20Console(t *testing.T, wrap func(http.Handler) http.Handler) (*httptest.Server, *admin.Service) {
	t.Helper()
	ctx := context.Background()
	l, err := commitlog.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := embedded.New(l)
	t.Cleanup(func() { b.Close(); l.Close() })
	for _, topic := range []string{"orders", "billing.dlq"} {
		if err := b.EnsureTopic(ctx, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	for i, class := range []retry.Class{retry.ClassPermanent, dlq.ClassParked} {
		m := &ferry.Message{Topic: "orders", Key: []byte("k"), Payload: []byte(fmt.Sprintf("k/%d", i))}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		e := dlq.NewEntry(m, "billing.dlq", dlq.Failure{Group: "billing", Handler: "h", Attempts: 1, First: now, Last: now.Add(time.Duration(i) * time.Millisecond),
			Err: errors.New("poison"), Class: class})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte(review20Token), bcrypt.MinCost)
	auth, err := admin.NewAuth(admin.AuthConfig{Tokens: []admin.TokenConfig{{Name: "ops", Hash: string(hash), Roles: []string{"ops"}}},
		Roles: map[string][]admin.Rule{"ops": {{Verbs: []string{admin.VerbRead, admin.VerbRedrive, admin.VerbPurge}, Topics: []string{"*"}, Groups: []string{"*"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	svc := admin.NewService(b)
	var h http.Handler = admin.NewHandler(svc, auth)
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, svc
}

func review20States(t *testing.T, svc *admin.Service) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, state := range admin.States {
		es, err := svc.DeadLetters(context.Background(), "billing.dlq", admin.Filter{State: state}, admin.Page{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			out[e.Class] = e.State
		}
	}
	return out
}

// waitJS waits until the expression is true.
func (b *browser) waitJS(what, js string) {
	b.t.Helper()
	b.do("wait for "+what, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(step))(ctx, t)
		return err
	}))
}

// TestReview20PurgeConfirmationMatchesWhatIsPurged: with "the selected
// entries", the purge dialog asks to purge "1 selected entry (and the
// rest of their keys)", but a purge takes only the entries its filter
// names (dlq.Queue.Purge does not widen to keys as Redrive does): the
// other entry of key k stays dead, and the key stays parked behind it,
// although the dialog said keys move on. (The entry page's dialog says
// "and the key's later entries" too.) Either the dialog or the purge must
// change.
func TestReview20PurgeConfirmationMatchesWhatIsPurged(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a browser")
	}
	chromium(t)
	srv, svc := review20Console(t, nil)
	ops := newBrowser(t, srv.URL)
	ops.login(review20Token)
	ops.open("#/dlq/billing.dlq")
	ops.waitText("main table", "parked")
	ops.do("select the poison message's entry, and purge the selection",
		chromedp.Click(chromedp.CSS(`tbody tr:first-child input[type=checkbox]`)),
		chromedp.Click(chromedp.ID("purge-btn")), chromedp.WaitVisible(chromedp.ID("confirm-ok")))
	text := eval[string](ops, `document.getElementById("confirm-text").textContent`)
	ops.do("confirm", chromedp.Click(chromedp.ID("confirm-ok")))
	ops.waitText("#op-result", "Purged")
	got := review20States(t, svc)
	if strings.Contains(text, "rest of their keys") && got["parked"] != dlq.StatePurged {
		t.Fatalf("the dialog asked %q; after confirming, the entries are %v: the rest of the key was not purged", text, got)
	}
}

// TestReview20RedriveThatEndsWithoutAResultIsNotASuccess: postStream
// returns when the event stream ends, whether or not a result (or an
// error) came; the redrive's result is then null, and the console reports
// "Redrive requested for 0 entries: their owner handles them in order"
// for a redrive whose answer was cut (a proxy's timeout, a load balancer
// closing the stream) and that may have done nothing or anything.
func TestReview20RedriveThatEndsWithoutAResultIsNotASuccess(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a browser")
	}
	chromium(t)
	cut := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/redrive") {
				// What a proxy passes on before it closes the stream.
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(http.StatusOK)
				fmt.Fprint(w, "event: progress\ndata: {\"done\":0,\"total\":2}\n\n")
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	srv, _ := review20Console(t, cut)
	ops := newBrowser(t, srv.URL)
	ops.login(review20Token)
	ops.open("#/dlq/billing.dlq")
	ops.waitText("main table", "parked")
	ops.do("redrive every entry the filter matches",
		chromedp.SetValue(chromedp.ID("scope"), "filter"),
		chromedp.Click(chromedp.ID("redrive-btn")), chromedp.WaitVisible(chromedp.ID("confirm-ok")),
		chromedp.Click(chromedp.ID("confirm-ok")))
	ops.waitJS("the redrive's outcome", `!!document.querySelector("#op-result, #op-status .problem")`)
	if got := eval[string](ops, `document.getElementById("op-status").textContent`); !strings.Contains(got, "Error") {
		t.Fatalf("a redrive whose stream ended without a result: the console says %q, want an error", got)
	}
}

// TestReview20LogoutFormFromAnotherSite: a page of another site
// (http://localhost:PORT is another site than http://127.0.0.1) posts a
// form to the console's /ui/logout. The Strict cookie is not sent, the
// handler answers 204 without asking where the request came from, and
// Chromium applies its Set-Cookie (a top-level navigation may set
// Strict cookies): the operator is logged out by any page they visit.
func TestReview20LogoutFormFromAnotherSite(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a browser")
	}
	chromium(t)
	srv, _ := review20Console(t, nil)
	ops := newBrowser(t, srv.URL)
	ops.login(review20Token)
	if got := eval[int](ops, `fetch("/api/v1/topics").then(r => r.status)`); got != http.StatusOK {
		t.Fatalf("logged in, the API answered %d", got)
	}
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/ui/logout"></form><script>document.forms[0].submit()</script>`, srv.URL)
	}))
	defer evil.Close()
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
	ops.do("visit a page of another site", chromedp.Navigate(evilURL))
	// A 204 leaves the browser on the forging page; give the form time to
	// be answered.
	time.Sleep(time.Second)
	ops.open("")
	if got := eval[int](ops, `fetch("/api/v1/topics").then(r => r.status)`); got != http.StatusOK {
		t.Fatalf("after a page of %s posted a form to /ui/logout, the console's API answers %d: the session is gone", evilURL, got)
	}
}
