package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// fixture is an API over an embedded log holding topic orders (2
// partitions) and the DLQ billing.dlq: key k's poison message and one
// message parked behind it.
type fixture struct {
	b   *embedded.Backend
	svc *Service
	srv *httptest.Server
}

// tokens of the fixture's access file: name -> verbs on every topic and
// group.
var fixtureTokens = map[string][]string{
	"reader":   {VerbRead},
	"ops":      {VerbRead, VerbRedrive, VerbPurge, VerbProduce},
	"noreplay": {VerbRead, VerbProduce},
	"root":     {VerbAdmin},
}

func tokenOf(name string) string { return name + "-secret-token-0123456789" }

func fixtureAuth(t testing.TB, clients ...ClientConfig) *Auth {
	cfg := AuthConfig{Roles: map[string][]Rule{}, Clients: clients}
	for name, verbs := range fixtureTokens {
		h, err := bcrypt.GenerateFromPassword([]byte(tokenOf(name)), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Tokens = append(cfg.Tokens, TokenConfig{Name: name, Hash: string(h), Roles: []string{name}})
		cfg.Roles[name] = []Rule{{Verbs: verbs, Topics: []string{"*"}, Groups: []string{"*"}}}
	}
	a, err := NewAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	b := newTestBackend(t)
	if err := b.EnsureTopic(ctx, "orders", 2); err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureTopic(ctx, "billing.dlq", 1); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, class := range []retry.Class{retry.ClassPermanent, dlq.ClassParked} {
		m := &ferry.Message{Topic: "orders", Key: []byte("k"), Payload: []byte{byte('a' + i)}}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		e := dlq.NewEntry(m, "billing.dlq", dlq.Failure{Group: "billing", Handler: "h", Attempts: 1, First: now, Last: now, Err: errors.New("poison"), Class: class})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{b: b, svc: NewService(b)}
	f.srv = httptest.NewServer(NewHandler(f.svc, fixtureAuth(t)))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) client(t *testing.T, token string) *Client {
	c, err := NewClient(f.srv.URL, token, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// states returns the DLQ's entries' states, as the Service sees them.
func (f *fixture) states(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, state := range States {
		es, err := f.svc.DeadLetters(context.Background(), "billing.dlq", Filter{State: state}, Page{})
		if err != nil {
			t.Fatal(err)
		}
		for range es {
			out = append(out, state)
		}
	}
	return out
}

func (f *fixture) audit(t *testing.T) []AuditRecord {
	t.Helper()
	recs, err := f.svc.AuditLog(context.Background(), AuditQuery{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestUnauthenticatedIs401AndAudited(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, token := range []string{"", "wrong-token-0123456789"} {
		_, err := f.client(t, token).Topics(ctx)
		var ae *APIError
		if !errors.Is(err, ErrUnauthenticated) || !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Fatalf("token %q: %v", token, err)
		}
		_, err = f.client(t, token).Purge(ctx, "billing.dlq", Purge{})
		if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("purge with token %q: %v", token, err)
		}
	}
	if got := f.states(t); !reflect.DeepEqual(got, []string{"dead", "dead"}) {
		t.Fatalf("after unauthenticated purges: %v", got)
	}
	recs := f.audit(t)
	if len(recs) != 2 || recs[0].Data.Result != AuditDenied || recs[0].Data.Status != 401 || recs[0].Data.Actor != "unauthenticated" {
		t.Fatalf("audit: %+v", recs)
	}
}

func TestRedriveNeedsItsVerbAndNothingMoves(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.client(t, tokenOf("reader")).Redrive(ctx, "billing.dlq", Redrive{}, nil)
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), `"redrive"`) {
		t.Fatalf("reader's redrive: %v", err)
	}
	// With progress (server-sent events) too: the check comes first.
	_, err = f.client(t, tokenOf("reader")).Redrive(ctx, "billing.dlq", Redrive{}, func(Progress) {})
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("reader's streamed redrive: %v", err)
	}
	if got := f.states(t); !reflect.DeepEqual(got, []string{"dead", "dead"}) {
		t.Fatalf("after refused redrives: %v", got)
	}
	var progress []Progress
	res, err := f.client(t, tokenOf("ops")).Redrive(ctx, "billing.dlq", Redrive{}, func(p Progress) { progress = append(progress, p) })
	if err != nil || res.Entries != 2 || len(progress) == 0 || progress[len(progress)-1] != (Progress{2, 2}) {
		t.Fatalf("ops' redrive: %+v %v, progress %v", res, err, progress)
	}
	if got := f.states(t); !reflect.DeepEqual(got, []string{"requested", "requested"}) {
		t.Fatalf("after the redrive: %v", got)
	}
	var got []string
	for _, r := range f.audit(t) {
		got = append(got, r.Data.Actor+" "+r.Data.Result+" "+r.Data.Counts)
	}
	want := []string{"reader denied ", "reader denied ", "ops ok redriven 2 of 2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("audit %q, want %q", got, want)
	}
}

func TestReplayIsItsOwnVerb(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client(t, tokenOf("noreplay"))
	page, err := c.Messages(ctx, "orders", PartitionOf("k", 2), "earliest", 0)
	if err != nil || len(page.Messages) != 2 {
		t.Fatalf("noreplay reads: %+v %v", page, err)
	}
	if _, err := c.Replay(ctx, Replay{From: "orders", To: "copy"}); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), `"replay"`) {
		t.Fatalf("noreplay's replay: %v", err)
	}
	if _, err := f.b.Partitions(ctx, "copy"); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("the refused replay created its target: %v", err)
	}
	res, err := f.client(t, tokenOf("root")).Replay(ctx, Replay{From: "orders", To: "copy"})
	if err != nil || res.Copied != 2 || !res.Created {
		t.Fatalf("root's replay: %+v %v", res, err)
	}
}

// PartitionOf is the partition of key among n.
func PartitionOf(key string, n int) int32 { return ferry.PartitionForKey([]byte(key), n) }

func TestAuditTopicIsWrittenOnlyByTheAuditLog(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client(t, tokenOf("root"))
	if _, err := c.Produce(ctx, "orders", []Message{{Payload: "x"}}); err != nil { // creates the audit topic
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"produce": func() error { _, err := c.Produce(ctx, DefaultAuditTopic, []Message{{Payload: "forged"}}); return err },
		"replay":  func() error { _, err := c.Replay(ctx, Replay{From: "orders", To: DefaultAuditTopic}); return err },
		"delete":  func() error { return c.DeleteTopic(ctx, DefaultAuditTopic) },
		"purge":   func() error { _, err := c.Purge(ctx, DefaultAuditTopic, Purge{}); return err },
		"redrive": func() error { _, err := c.Redrive(ctx, DefaultAuditTopic, Redrive{}, nil); return err },
		"move":    func() error { _, err := c.Redrive(ctx, "billing.dlq", Redrive{To: DefaultAuditTopic}, nil); return err },
		"reset": func() error {
			_, err := c.ResetGroup(ctx, "g", Reset{Topic: DefaultAuditTopic, To: "earliest", Force: true})
			return err
		},
		"create": func() error {
			_, err := c.CreateTopic(ctx, CreateTopic{Name: DefaultAuditTopic, Partitions: 1})
			return err
		},
	} {
		if err := call(); !errors.Is(err, ErrProtected) {
			t.Errorf("%s on the audit topic: %v", name, err)
		}
	}
	recs := f.audit(t)
	if len(recs) != 9 { // the produce, and each refusal
		t.Fatalf("%d audit records, want 9: %+v", len(recs), recs)
	}
	for _, r := range recs[1:] {
		if r.Data.Result != AuditDenied || r.Data.Status != http.StatusForbidden {
			t.Errorf("audit record of a refusal: %+v", r.Data)
		}
	}
	if got := f.states(t); !reflect.DeepEqual(got, []string{"dead", "dead"}) {
		t.Fatalf("after the refusals: %v", got)
	}
}

func TestBadInputIs400AndChangesNothing(t *testing.T) {
	f := newFixture(t)
	do := func(method, path, body string) (int, ErrorBody) {
		req, _ := http.NewRequest(method, f.srv.URL+Prefix+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokenOf("root"))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return resp.StatusCode, eb
	}
	for _, c := range []struct{ method, path, body, says string }{
		{"POST", "/dlq/billing.dlq/purge", "{", "malformed JSON"},
		{"POST", "/dlq/billing.dlq/purge", "", "empty"},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{"clas":"permanent"}}`, `unknown field "clas"`},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{}} {"filter":{}}`, "more than one JSON value"},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{"class":"nope"}}`, "want one of transient"},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{"since":"yesterday"}}`, "RFC 3339"},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{"ids":["not-a-uuid"]}}`, "want a message ID"},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{"class":7}}`, "want string"},
		{"POST", "/dlq/billing.dlq/purge", `{"filter":{"key":"` + strings.Repeat("x", MaxBody) + `"}}`, "larger than 1048576 bytes"},
		{"POST", "/dlq/billing.dlq/redrive", `{"per_second":-1}`, "per_second"},
		{"GET", "/dlq/billing.dlq/entries?class=nope", "", "want one of"},
		{"GET", "/dlq/billing.dlq/entries?bogus=1", "", `unknown filter parameter "bogus"`},
		{"GET", "/dlq/billing.dlq/entries?key=a&key=b", "", "given 2 times"},
		{"GET", "/dlq/billing.dlq/entries?limit=x", "", "want an integer"},
		{"GET", "/topics/orders/partitions/0/messages?start=noon", "", "want earliest"},
		{"GET", "/topics/orders/partitions/9/messages", "", "partitions 0 to 1"},
		{"GET", "/topics/orders/partitions/-1/messages", "", "want a number"},
		{"GET", "/topics/orders/partitions/0/messages?limit=100000", "", "want 1 to"},
		{"GET", "/topics/orders/search", "", "give a key or a header"},
		{"POST", "/topics", `{"name":"t","partitions":0}`, "want 1 to"},
		{"POST", "/topics/orders/messages", `{"messages":[]}`, "want 1 to"},
		{"POST", "/topics/orders/messages", `{"messages":[{"payload":"%%","encoding":"base64"}]}`, "message 0"},
		{"POST", "/groups/billing/reset", `{"topic":"orders","to":"noon"}`, "want earliest"},
	} {
		status, eb := do(c.method, c.path, c.body)
		if status != http.StatusBadRequest || eb.Error.Code != "invalid_argument" || !strings.Contains(eb.Error.Message, c.says) || eb.RequestID == "" {
			t.Errorf("%s %s %.60q: %d %+v, want 400 saying %q", c.method, c.path, c.body, status, eb, c.says)
		}
	}
	if got := f.states(t); !reflect.DeepEqual(got, []string{"dead", "dead"}) {
		t.Fatalf("after bad input: %v", got)
	}
	if _, err := f.b.Partitions(context.Background(), "t"); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("a refused create made the topic: %v", err)
	}
	if status, eb := do("GET", "/no/such/route", ""); status != 404 || !strings.Contains(eb.Error.Message, "no route") {
		t.Fatalf("unknown route: %d %+v", status, eb)
	}
}

func TestGroupResetRefusedWhileMembersLive(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	s, err := f.b.Join(ctx, "billing", "m1", []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	c := f.client(t, tokenOf("root"))
	_, err = c.ResetGroup(ctx, "billing", Reset{Topic: "orders", To: "latest"})
	if !errors.Is(err, ErrGroupActive) || !strings.Contains(err.Error(), "m1") {
		t.Fatalf("reset with a live member: %v", err)
	}
	if _, ok, _ := f.b.Committed(ctx, "billing", backend.TopicPartition{Topic: "orders"}); ok {
		t.Fatal("the refused reset committed")
	}
	out, err := c.ResetGroup(ctx, "billing", Reset{Topic: "orders", To: "latest", Force: true})
	if err != nil || len(out) != 2 {
		t.Fatalf("forced reset: %+v %v", out, err)
	}
	s.Leave()
	g, err := c.Group(ctx, "billing")
	if err != nil || len(g.Partitions) != 2 || len(g.Members) != 0 {
		t.Fatalf("group after: %+v %v", g, err)
	}
}

// certs makes a CA, a server certificate for 127.0.0.1 and a client
// certificate for CN=ops, all signed by the CA.
func certs(t *testing.T) (ca *x509.CertPool, server, client tls.Certificate) {
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	ca = x509.NewCertPool()
	ca.AddCert(caCert)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) tls.Certificate {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	return ca, leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")}),
		leaf(3, "ops", x509.ExtKeyUsageClientAuth, nil)
}

func TestClientCertificatesAndTLS(t *testing.T) {
	b := newTestBackend(t)
	ctx := context.Background()
	b.EnsureTopic(ctx, "orders", 1)
	ca, serverCert, clientCert := certs(t)
	svc := NewService(b)
	srv := httptest.NewUnstartedServer(NewHandler(svc, fixtureAuth(t, ClientConfig{Subject: "CN=ops", Roles: []string{"ops"}})))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	defer srv.Close()
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca, Certificates: certs}}}
	}
	c, err := NewClient(srv.URL, "", client(clientCert))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Produce(ctx, "orders", []Message{{Payload: "by certificate"}}); err != nil {
		t.Fatalf("produce with a client certificate: %v", err)
	}
	recs, _ := svc.AuditLog(ctx, AuditQuery{})
	if len(recs) != 1 || recs[0].Data.Actor != "CN=ops" || recs[0].Data.Auth != "mtls" {
		t.Fatalf("audit: %+v", recs)
	}
	// Without a certificate and without a token: 401.
	c2, _ := NewClient(srv.URL, "", client())
	if _, err := c2.Topics(ctx); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("no certificate, no token: %v", err)
	}
	// With a token instead: in.
	c3, _ := NewClient(srv.URL, tokenOf("reader"), client())
	if _, err := c3.Topics(ctx); err != nil {
		t.Fatalf("token over TLS: %v", err)
	}
	// Plain HTTP to the TLS port fails.
	plain := strings.Replace(srv.URL, "https://", "http://", 1)
	c4, _ := NewClient(plain, tokenOf("root"), nil)
	if _, err := c4.Topics(ctx); err == nil {
		t.Fatal("plain HTTP to the TLS port answered")
	}
}

func TestAuthConfigIsChecked(t *testing.T) {
	for _, c := range []struct {
		cfg  AuthConfig
		says string
	}{
		{AuthConfig{Tokens: []TokenConfig{{Name: "a", Hash: "plain", Roles: nil}}}, "bcrypt"},
		{AuthConfig{Tokens: []TokenConfig{{Name: "a", Hash: "$2a$04$012345678901234567890u8OhNf5j2M0ZpSpdXhMkMRlM5A1ZGq.", Roles: []string{"x"}}}}, `role "x" is not defined`},
		{AuthConfig{Roles: map[string][]Rule{"r": {{Verbs: []string{"delete"}}}}}, `verb "delete"`},
		{AuthConfig{Roles: map[string][]Rule{"r": {{Verbs: []string{"read"}, Topics: []string{"["}}}}}, `pattern "["`},
	} {
		if _, err := NewAuth(c.cfg); !errors.Is(err, ferry.ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v, want saying %q", c.cfg, err, c.says)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{"class=permanent&key=k", "since=1h&until=2026-01-01T00:00:00Z", "id=0190d3a0-0000-7000-8000-000000000000&id=x", "state=dead", "bogus=1", "key=%ff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := ParseFilter(q)
		if err != nil {
			if !errors.Is(err, ferry.ErrInvalidArgument) {
				t.Fatalf("%q: error without ErrInvalidArgument: %v", raw, err)
			}
			return
		}
		again, err := ParseFilter(flt.Query())
		if err != nil || !reflect.DeepEqual(flt, again) {
			t.Fatalf("%q: %+v round-trips to %+v, %v", raw, flt, again, err)
		}
	})
}

// Every request that may change something is on record, also one that
// matches no route (an unknown path, a method the path does not take);
// HEAD and OPTIONS, like GET, are reads and are not.
func TestEveryMutatingRequestIsAudited(t *testing.T) {
	f := newFixture(t)
	do := func(method, path string) int {
		t.Helper()
		req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tokenOf("root"))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"POST", "/api/v1/nope", 404},
		{"DELETE", "/api/v1/topics/orders/partitions/0", 404},
		{"PUT", "/api/v1/topics", 405},
		{"DELETE", "/api/v1/health", 405},
		{"PATCH", "/elsewhere", 404},
	} {
		if got := do(c.method, c.path); got != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, got, c.status)
		}
	}
	for _, method := range []string{"HEAD", "OPTIONS", "GET"} {
		do(method, "/api/v1/topics")
		do(method, "/api/v1/nope")
	}
	recs := f.audit(t)
	if len(recs) != 5 {
		t.Fatalf("%d audit records, want the 5 mutating requests: %+v", len(recs), recs)
	}
	for i, r := range recs {
		if r.Data.Verb != VerbUnrouted || r.Data.Actor != "root" || r.Data.Result != AuditFailed || r.Data.Status < 404 {
			t.Errorf("record %d: %+v", i, r.Data)
		}
	}
}

// A name a URL path cannot carry ("", ".", "..") is refused by the Client
// as bad input, not sent as some other path (which the server would
// redirect or answer for another resource). A glob "*" grants names with
// a slash too.
func TestClientRefusesNamesAPathCannotCarry(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client(t, tokenOf("root"))
	for _, name := range []string{"", ".", ".."} {
		_, e1 := c.Topic(ctx, name)
		e2 := c.DeleteTopic(ctx, name)
		_, e3 := c.Group(ctx, name)
		_, e4 := c.DeadLetters(ctx, name, Filter{}, Page{})
		_, e5 := c.Messages(ctx, name, 0, "", 0)
		_, e6 := c.DeadLetter(ctx, "billing.dlq", name)
		for i, err := range []error{e1, e2, e3, e4, e5, e6} {
			if !errors.Is(err, ferry.ErrInvalidArgument) {
				t.Errorf("name %q, call %d: %v, want ErrInvalidArgument", name, i+1, err)
			}
		}
	}
	if recs := f.audit(t); len(recs) != 0 {
		t.Errorf("refused names reached the server: %d audit records", len(recs))
	}
	if _, err := c.Group(ctx, "team/billing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("group team/billing with a role on \"*\": %v, want not found (not forbidden)", err)
	}
}

// A DLQ list is a page (DefaultLimit unless told, at most MaxLimit);
// After a page's last position comes the next one, and entries resolved
// between pages move no other entry: every entry still listed is seen
// once, in dead-letter order.
func TestDeadLettersPageByPosition(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	for _, tp := range []string{"orders", "g.dlq"} {
		if err := b.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	const n = 250
	var want []string
	var batch []*ferry.Message
	for i := range n {
		m := &ferry.Message{ID: ferry.NewID(), Topic: "orders", Key: []byte(fmt.Sprint("k", i)), Payload: []byte("x")}
		batch = append(batch, dlq.NewEntry(m, "g.dlq", dlq.Failure{Group: "g", Handler: "h", Attempts: 1, First: time.Now(), Last: time.Now(), Err: errors.New("poison"), Class: retry.ClassPermanent}))
		want = append(want, m.ID.String())
	}
	if err := b.Publish(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(NewService(b), nil))
	defer srv.Close()
	c, err := NewClient(srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, api := range []API{NewService(b), c} {
		first, err := api.DeadLetters(ctx, "g.dlq", Filter{}, Page{})
		if err != nil || len(first) != DefaultLimit {
			t.Fatalf("%T: a list without a limit: %d entries (%v), want a page of %d", api, len(first), err, DefaultLimit)
		}
		if _, err := api.DeadLetters(ctx, "g.dlq", Filter{}, Page{Limit: MaxLimit + 1}); !errors.Is(err, ferry.ErrInvalidArgument) {
			t.Fatalf("%T: limit over MaxLimit: %v", api, err)
		}
		for _, bad := range []string{"x", "1", "-1:2", "0:x"} {
			if _, err := api.DeadLetters(ctx, "g.dlq", Filter{}, Page{After: bad}); !errors.Is(err, ferry.ErrInvalidArgument) {
				t.Fatalf("%T: after %q: %v, want ErrInvalidArgument", api, bad, err)
			}
		}
	}
	var got []string
	page := Page{Limit: 40}
	svc := NewService(b)
	for i := 0; ; i++ {
		rows, err := c.DeadLetters(ctx, "g.dlq", Filter{}, page)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			got = append(got, r.ID)
		}
		if len(rows) < page.Limit {
			break
		}
		page.After = rows[len(rows)-1].Position
		if i > n/page.Limit+1 {
			t.Fatalf("still paging after %d pages: After does not move the list on", i)
		}
		if i == 1 {
			// Resolve the last entry seen and two not seen yet.
			id := func(k int) []ferry.ID { v, _ := ferry.ParseID(want[k]); return []ferry.ID{v} }
			for _, k := range []int{len(got) - 1, len(got), len(got) + 1} {
				if _, err := svc.Purge(ctx, "g.dlq", Purge{Filter: Filter{IDs: []string{id(k)[0].String()}}}); err != nil {
					t.Fatal(err)
				}
			}
			want = slices.Delete(want, len(got), len(got)+2)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged through %d entries, want %d in dead-letter order (first difference near %d)", len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// The audit log answers the newest records that match, oldest first, at
// most Limit; Since starts the read where the time index says, and misses
// nothing at or after it.
func TestAuditLogNewestMatchesSince(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	now := t0
	svc := NewService(b, WithClock(func() time.Time { return now }))
	const n = 250
	for i := range n {
		now = t0.Add(time.Duration(i) * time.Minute)
		verb := VerbRedrive
		if i%3 == 0 {
			verb = VerbPurge
		}
		if err := svc.Record(ctx, svc.NewAuditRecord(verb, fmt.Sprint("topic:t", i), AuditData{Actor: "ops", Result: AuditOK})); err != nil {
			t.Fatal(err)
		}
	}
	targets := func(recs []AuditRecord) []string {
		var out []string
		for _, r := range recs {
			out = append(out, r.Data.Target)
		}
		return out
	}
	for _, c := range []struct {
		q    AuditQuery
		want []string
	}{
		{AuditQuery{Limit: 3}, []string{"topic:t247", "topic:t248", "topic:t249"}},
		{AuditQuery{Limit: 2, Verb: VerbPurge}, []string{"topic:t246", "topic:t249"}},
		{AuditQuery{Since: t0.Add(247 * time.Minute).Format(time.RFC3339)}, []string{"topic:t247", "topic:t248", "topic:t249"}},
		{AuditQuery{Since: t0.Add(240 * time.Minute).Format(time.RFC3339), Verb: VerbPurge, Limit: 2}, []string{"topic:t246", "topic:t249"}},
	} {
		recs, err := svc.AuditLog(ctx, c.q)
		if err != nil || !slices.Equal(targets(recs), c.want) {
			t.Errorf("%+v: %v (%v), want %v", c.q, targets(recs), err, c.want)
		}
	}
	if recs, err := svc.AuditLog(ctx, AuditQuery{}); err != nil || len(recs) != DefaultLimit || recs[DefaultLimit-1].Data.Target != "topic:t249" {
		t.Errorf("no limit: %d records (%v), want the newest %d", len(recs), err, DefaultLimit)
	}
}

// A group's deletion removes its committed offsets; refused while it has
// a live member (unless forced, or as another verb than admin), and an
// unknown group is not found. Audited.
func TestDeleteGroup(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client(t, tokenOf("root"))
	if _, err := c.ResetGroup(ctx, "billing", Reset{Topic: "orders", To: "latest"}); err != nil {
		t.Fatal(err)
	}
	s, err := f.b.Join(ctx, "billing", "m1", []string{"orders"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteGroup(ctx, "billing", false); !errors.Is(err, ErrGroupActive) || !strings.Contains(err.Error(), "m1") {
		t.Fatalf("delete with a live member: %v", err)
	}
	if err := f.client(t, tokenOf("ops")).DeleteGroup(ctx, "billing", true); !errors.Is(err, ErrForbidden) {
		t.Fatalf("delete without the admin verb: %v", err)
	}
	if _, ok, _ := f.b.Committed(ctx, "billing", backend.TopicPartition{Topic: "orders"}); !ok {
		t.Fatal("a refused delete removed the offsets")
	}
	s.Leave()
	if err := c.DeleteGroup(ctx, "billing", false); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, ok, _ := f.b.Committed(ctx, "billing", backend.TopicPartition{Topic: "orders"}); ok {
		t.Fatal("the deleted group still has a committed offset")
	}
	if err := c.DeleteGroup(ctx, "billing", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a second delete: %v, want not found", err)
	}
	n := 0
	for _, r := range f.audit(t) {
		if r.Data.Method == "DELETE" && r.Data.Target == "group:billing" {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d audit records of the group's deletes, want 4 (refused, forbidden, done, not found)", n)
	}
}

// Messages cannot be written into a dead-letter topic through the API
// (produce, replay into): one with a dead letter's headers would be an
// entry its group's owner handles, injected without the right to produce
// to the group's source. A consumer's DLQ named otherwise is known from
// the registry.
func TestDLQTopicsAreNotWrittenThroughTheAPI(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client(t, tokenOf("root"))
	e, err := f.svc.DeadLetters(ctx, "billing.dlq", Filter{}, Page{})
	if err != nil || len(e) == 0 {
		t.Fatalf("setup: %v %v", e, err)
	}
	forged := Message{Key: "k", Payload: "forged", Headers: []Header{{Key: dlq.HeaderOriginalID, Value: ferry.NewID().String()}, {Key: dlq.HeaderGroup, Value: "billing"}}}
	if _, err := c.Produce(ctx, "billing.dlq", []Message{forged}); !errors.Is(err, ErrProtected) {
		t.Fatalf("produce into billing.dlq: %v, want ErrProtected", err)
	}
	if _, err := c.Replay(ctx, Replay{From: "billing.dlq", To: "shipping.dlq"}); !errors.Is(err, ErrProtected) {
		t.Fatalf("replay into shipping.dlq: %v, want ErrProtected", err)
	}
	if err := f.b.EnsureTopic(ctx, "custom-dead", 1); err != nil {
		t.Fatal(err)
	}
	var reg Registry
	defer reg.Add(dlqRunner{"custom-dead"})()
	svc := NewService(f.b, WithRegistry(&reg))
	if _, err := svc.Produce(ctx, "custom-dead", []Message{forged}); !errors.Is(err, ErrProtected) {
		t.Fatalf("produce into a registered consumer's DLQ: %v, want ErrProtected", err)
	}
	if got, _ := f.svc.DeadLetters(ctx, "billing.dlq", Filter{}, Page{}); len(got) != len(e) {
		t.Fatalf("the DLQ holds %d entries after the refusals, want %d", len(got), len(e))
	}
}

// dlqRunner is a registered consumer with a DLQ topic (and nothing else).
type dlqRunner struct{ topic string }

func (r dlqRunner) Group() string                            { return "custom" }
func (r dlqRunner) Member() string                           { return "m" }
func (r dlqRunner) DLQTopic() string                         { return r.topic }
func (r dlqRunner) Healthy() error                           { return nil }
func (r dlqRunner) Stats() consumer.Stats                    { return consumer.Stats{} }
func (r dlqRunner) PartitionStats() []consumer.PartitionStat { return nil }
