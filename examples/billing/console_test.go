package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/ferrymq/ferry/admin"
)

// chromium returns the browser the console tests drive: $CHROMIUM or
// Debian's. Under CI=true a missing browser fails the test with the
// command that installs it; elsewhere it skips with that message.
func chromium(t *testing.T) string {
	t.Helper()
	path := os.Getenv("CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(path); err != nil {
		msg := fmt.Sprintf("no browser at %s (set CHROMIUM, or install it: apt-get install -y chromium): %v", path, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// browser is one headless Chromium with a profile of its own (its own
// cookies), on a laptop-sized window.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string // the service's URL
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1366, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil { // starts the browser
		t.Fatalf("start %s: %v", chromium(t), err)
	}
	return &browser{t: t, ctx: ctx, base: base}
}

// step bounds one browser step far beyond what it needs (it waits on
// the page, it does not time it).
const step = 60 * time.Second

// do runs steps, failing the test with what on an error.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, step)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v\npage: %s", what, err, b.pageText())
	}
}

// pageText is the visible text of the page, for failure messages.
func (b *browser) pageText() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	return s
}

// open navigates to a console page (a hash route like "#/audit").
func (b *browser) open(route string) {
	b.t.Helper()
	b.do("open "+route, chromedp.Navigate(b.base+"/ui/"+route))
}

// waitText waits until the element sel exists and its text holds want.
func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	js := fmt.Sprintf(`(document.querySelector(%s)?.textContent || "").includes(%s)`, jsString(sel), jsString(want))
	b.do(fmt.Sprintf("wait for %q in %s", want, sel),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(step))(ctx, t)
			return err
		}))
}

// eval evaluates a JavaScript expression (awaiting a promise) into T.
func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, step)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// login logs in through the login form, as a person would.
func (b *browser) login(token string) {
	b.t.Helper()
	b.open("")
	b.do("log in",
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("health-status")))
}

// checkAccessible fails the test if a control of the page has no name a
// screen reader can say (a label, aria-label or text), if an image has
// no text, or if the page has no h1: what a keyboard and screen-reader
// user needs first.
func (b *browser) checkAccessible(page string) {
	b.t.Helper()
	bad := eval[[]string](b, `(() => {
		const out = [];
		for (const e of document.querySelectorAll("input, select, textarea")) {
			if (e.type === "hidden") continue;
			if (!(e.labels && e.labels.length) && !e.getAttribute("aria-label")) out.push(e.outerHTML.slice(0, 120));
		}
		for (const e of document.querySelectorAll("button, a[href]")) {
			if (!(e.textContent.trim() || e.getAttribute("aria-label"))) out.push(e.outerHTML.slice(0, 120));
		}
		for (const e of document.querySelectorAll("svg[role=img], img")) {
			if (!(e.getAttribute("aria-label") || e.getAttribute("alt"))) out.push(e.outerHTML.slice(0, 120));
		}
		if (!document.querySelector("h1")) out.push("no h1");
		return out;
	})()`)
	if len(bad) > 0 {
		b.t.Errorf("%s: unnamed for a screen reader: %q", page, bad)
	}
}

// shot saves a screenshot of the page as NAME.png in $FERRY_SCREENSHOTS,
// if it is set (scripts/console-screenshots sets it to docs/console).
func (b *browser) shot(name string) {
	b.t.Helper()
	dir := os.Getenv("FERRY_SCREENSHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, step)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// TestConsoleInABrowser drives the web console in headless Chromium
// against the billing service running in its own process with its
// consumer: an operator logs in, browses a topic to a message, finds a
// poison message (a panic) in the DLQ with its error and stack, redrives
// it and sees the key's messages handled in order, and finds the redrive
// in the audit page. A viewer's session sees no working redrive, and the
// API refuses it anyway. A forged form from another site and a request
// without the CSRF token are refused, and change nothing.
func TestConsoleInABrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service and a browser")
	}
	chromium(t)
	tmp := t.TempDir()
	bins := t.TempDir()
	serviceBin := build(t, ".", bins, "billing")
	authFile, opsToken, viewerToken := writeAccess(t, tmp)
	svc := startService(t, serviceBin, tmp, authFile, "--lag-every", "200ms")

	ctx := context.Background()
	client, err := admin.NewClient(svc.url, opsToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	produce := func(key, payload string) admin.Produced {
		t.Helper()
		out, err := client.Produce(ctx, "orders", []admin.Message{{Key: key, Payload: payload}})
		if err != nil {
			t.Fatalf("produce %s %s: %v", key, payload, err)
		}
		return out[0]
	}
	order := produce("customer-7", `{"order":1042,"amount":"19.90","currency":"EUR"}`)
	produce("k", "panic")
	produce("k", "k/1")
	produce("k", "k/2")
	produce("other", "o/0")
	dead := func() []admin.DeadLetter {
		es, err := client.DeadLetters(ctx, "billing.dlq", admin.Filter{}, admin.Page{})
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	waitFor(t, "the panic's entry and the two parked behind it", func() bool {
		return len(dead()) == 3 && slices.Contains(svc.lines(), "other o/0")
	})

	ops := newBrowser(t, svc.url)
	ops.login(opsToken)
	ops.waitText("#dlq-total", "3")
	ops.waitText("main", "billing.dlq")
	ops.shot("overview")
	ops.checkAccessible("overview")
	if got := eval[string](ops, `document.cookie`); strings.Contains(got, admin.SessionCookie) {
		t.Fatalf("the page's script reads the session cookie (%q): it must be HTTP-only", got)
	}

	// The topic, and a message in it.
	ops.do("follow the topic's link", chromedp.Click(chromedp.CSS(`a[href="#/topics/orders"]`)), chromedp.WaitVisible(chromedp.ID("browse")))
	ops.waitText("main", "Partitions")
	ops.open(fmt.Sprintf("#/topics/orders?partition=%d&start=%d&form=json", order.Partition, order.Offset))
	ops.waitText(fmt.Sprintf(`tr[data-offset="%d"]`, order.Offset), `"order":1042`)
	ops.do("show the message, its payload pretty-printed as JSON",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-offset="%d"] button`, order.Offset))))
	ops.waitText("tr.detail:not([hidden]) pre.payload", "\"order\": 1042,\n  \"amount\"")
	ops.shot("topic")
	ops.checkAccessible("topic")
	// The live tail shows a message produced after it started.
	ops.do("start the live tail", chromedp.Click(chromedp.ID("tail")))
	ops.waitText("#tail", "Stop tail")
	ops.waitText("#tail-state", "Following partition")
	live := produce("customer-7", "a message produced while the tail runs")
	ops.waitText(fmt.Sprintf(`tr[data-offset="%d"]`, live.Offset), "while the tail runs")
	ops.do("stop the live tail", chromedp.Click(chromedp.ID("tail")))

	// The poison message: a panic, with its error and stack.
	ops.open("#/dlq/billing.dlq")
	ops.waitText("main table", "panic")
	ops.shot("dlq")
	ops.checkAccessible("dlq")
	ops.do("open the panic's entry", chromedp.Click(chromedp.CSS(`td.mono a`)), chromedp.WaitVisible(chromedp.ID("e-stack")))
	ops.waitText("#e-class", "panic")
	ops.waitText("#e-error", "an order without a customer")
	ops.waitText("#e-stack", "main.run")
	ops.shot("entry")
	ops.checkAccessible("entry")

	// A viewer sees the entries, and no working redrive.
	viewer := newBrowser(t, svc.url)
	viewer.login(viewerToken)
	viewer.open("#/dlq/billing.dlq")
	viewer.waitText("#redrive-why", "viewer may not redrive billing.dlq")
	if !eval[bool](viewer, `document.getElementById("redrive-btn").disabled`) {
		t.Fatal("the viewer's redrive button works")
	}
	// Forcing it: the API refuses the viewer's session, CSRF token and all.
	status := eval[int](viewer, `fetch("/ui/session").then(r => r.json()).then(s => fetch("/api/v1/dlq/billing.dlq/redrive",
		{method: "POST", headers: {"Content-Type": "application/json", "X-Ferry-CSRF": s.csrf}, body: "{\"filter\":{}}"})).then(r => r.status)`)
	if status != http.StatusForbidden {
		t.Fatalf("the viewer's forced redrive: status %d, want 403", status)
	}

	// The operator's session without its CSRF token: refused.
	status = eval[int](ops, `fetch("/api/v1/dlq/billing.dlq/purge", {method: "POST", headers: {"Content-Type": "application/json"},
		body: "{\"filter\":{}}"}).then(r => r.status)`)
	if status != http.StatusForbidden {
		t.Fatalf("a purge without the CSRF token: status %d, want 403", status)
	}
	// A forged form on another site (another port of 127.0.0.1: the same
	// site, so the same-site cookie goes with it), posted by the
	// operator's browser.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/api/v1/dlq/billing.dlq/purge" enctype="text/plain">
<input name='{"filter":{},"x":"' value='"}'></form><script>document.forms[0].submit()</script>`, svc.url)
	}))
	defer evil.Close()
	ops.do("visit the forging page", chromedp.Navigate(evil.URL))
	waitFor(t, "the forged purge on record as denied", func() bool {
		recs, err := client.AuditLog(ctx, admin.AuditQuery{Verb: admin.VerbPurge})
		return err == nil && len(recs) == 2 && recs[1].Data.Result == admin.AuditDenied && recs[1].Data.Status == http.StatusForbidden
	})
	for _, e := range dead() {
		if e.State != "dead" {
			t.Fatalf("after the refused requests: %+v", e)
		}
	}
	if n := len(dead()); n != 3 {
		t.Fatalf("after the refused requests: %d entries, want 3", n)
	}

	// The fix is deployed; the operator redrives the entry from its page.
	if err := os.WriteFile(svc.fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ops.open("#/dlq/billing.dlq")
	ops.do("open the panic's entry", chromedp.Click(chromedp.CSS(`td.mono a`)), chromedp.WaitVisible(chromedp.ID("e-stack")))
	ops.do("redrive it", chromedp.Click(chromedp.ID("redrive-btn")), chromedp.WaitVisible(chromedp.ID("confirm-ok")))
	ops.waitText("#confirm-text", "handled in their original order")
	ops.do("confirm", chromedp.Click(chromedp.ID("confirm-ok")))
	ops.waitText("#op-result", "Redrive requested for 3 entries")
	produce("k", "k/3")
	waitFor(t, "the key's messages handled", func() bool { return slices.Contains(svc.lines(), "k k/3") })
	var ks []string
	for _, l := range svc.lines() {
		if strings.HasPrefix(l, "k ") {
			ks = append(ks, l)
		}
	}
	if want := []string{"k panic", "k k/1", "k k/2", "k k/3"}; !slices.Equal(ks, want) {
		t.Fatalf("key k handled as %q, want %q (once each, in order)", ks, want)
	}

	// The group's page: lag per partition, the chart, the running member.
	ops.open("#/groups/billing")
	ops.waitText("main", "Running in this process")
	ops.waitText("main", "healthy")
	ops.do("the lag chart", chromedp.WaitVisible(chromedp.CSS("svg#lag-chart polyline")))
	ops.shot("group")
	ops.checkAccessible("group")

	// The audit page holds the redrive, made through the console.
	ops.open("#/audit")
	ops.waitText(`tr[data-verb="redrive"]`, "ops (console)")
	ops.waitText(`tr[data-verb="redrive"]`, "redriven 3 of 3")
	ops.waitText(`tr[data-verb="login"]`, "viewer (console)")
	ops.shot("audit")
	ops.checkAccessible("audit")
	// In dark mode the page is dark (and stays readable: docs/console).
	ops.do("prefer dark", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return err
	}))
	if bg := eval[string](ops, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(13, 17, 23)" {
		t.Fatalf("in dark mode the page's background is %s", bg)
	}
	ops.shot("audit-dark")
	ops.do("prefer light again", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{})
		return err
	}))

	// Logging out ends the session.
	ops.do("log out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))
	ops.shot("login")
	if got := eval[int](ops, `fetch("/api/v1/topics").then(r => r.status)`); got != http.StatusUnauthorized {
		t.Fatalf("after logout, the API answered %d, want 401", got)
	}
	svc.stop(t)
}
