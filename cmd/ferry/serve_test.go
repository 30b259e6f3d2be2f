package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// serveProcess runs ferry serve as a process of its own on addr.
type serveProcess struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
}

func startServe(t *testing.T, dir, addr string, extra ...string) *serveProcess {
	t.Helper()
	var cmd *exec.Cmd
	var line string
	for range 50 { // the port of a killed server may take a moment to free
		cmd = exec.Command(buildFerry(t), append([]string{"--dir", dir, "serve", "--listen", addr}, extra...)...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ = bufio.NewReader(out).ReadString('\n')
		if strings.HasPrefix(line, "serving ") {
			break
		}
		cmd.Wait()
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.HasPrefix(line, "serving ") {
		t.Fatalf("ferry serve did not start: %q", line)
	}
	p := &serveProcess{t: t, cmd: cmd, addr: addr}
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *serveProcess) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

// ferry serve killed with SIGKILL ten times under load from idempotent
// producers (acks from all, the default): after each restart the
// producers' retries go on, and at the end every acknowledged record is
// in the log exactly once, each producer's records in the order sent
// within a partition, and no record is there twice. A transaction open
// when the server dies is not there at all.
func TestServeSurvivesSIGKILLUnderIdempotentProducers(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a server process ten times")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv := startServe(t, dir, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	admCl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(admCl)
	if _, err := adm.CreateTopic(ctx, 3, 1, nil, "load"); err != nil {
		t.Fatal(err)
	}
	admCl.Close()

	// A transaction left open by the last kill.
	txn, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.TransactionalID("killed"), kgo.DefaultProduceTopic("load"))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()

	const producers = 3
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// AlwaysRetryEOF: a server killed just after a new
			// connection's first request looks to franz-go like missing
			// SASL, which it does not retry by default.
			cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DefaultProduceTopic("load"), kgo.RecordRetries(1<<30),
				kgo.RetryTimeout(time.Minute), kgo.MaxBufferedRecords(2000), kgo.AlwaysRetryEOF())
			if err != nil {
				t.Error(err)
				return
			}
			defer cl.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					if err := cl.Flush(ctx); err != nil {
						t.Errorf("flush: %v", err)
					}
					return
				default:
				}
				v := fmt.Sprintf("%d/%d", p, i)
				cl.Produce(ctx, &kgo.Record{Key: []byte(strconv.Itoa(i % 7)), Value: []byte(v)}, func(r *kgo.Record, err error) {
					if err != nil {
						t.Errorf("produce %s: %v", v, err)
						return
					}
					mu.Lock()
					acked[v] = true
					mu.Unlock()
				})
			}
		}()
	}
	ackedNow := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	for kill := range 10 {
		before := ackedNow()
		deadline := time.Now().Add(30 * time.Second)
		for ackedNow() < before+200+rand.IntN(800) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if kill == 9 {
			if err := txn.BeginTransaction(); err != nil {
				t.Fatal(err)
			}
			if err := txn.ProduceSync(ctx, &kgo.Record{Value: []byte("in a killed transaction")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		srv.kill()
		srv = startServe(t, dir, addr)
	}
	close(stop)
	wg.Wait()
	if err := txn.EndTransaction(ctx, kgo.TryCommit); err == nil {
		t.Error("the transaction open when the server was killed committed")
	}

	rd, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("load"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	adm = kadm.NewClient(rd)
	ends, err := adm.ListEndOffsets(ctx, "load")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	ends.Each(func(o kadm.ListedOffset) { total += int(o.Offset) })
	seen := map[string]int{}
	last := map[string]int{} // producer/partition -> last sequence read
	for n := 0; n < total; {
		fs := rd.PollFetches(ctx)
		if err := fs.Err(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			n++
			v := string(r.Value)
			seen[v]++
			ps, is, ok := strings.Cut(v, "/")
			if !ok {
				t.Errorf("record %q in the log", v)
				return
			}
			i, _ := strconv.Atoi(is)
			k := fmt.Sprintf("%s@%d", ps, r.Partition)
			if prev, ok := last[k]; ok && i <= prev {
				t.Errorf("producer %s, partition %d: record %d after %d", ps, r.Partition, i, prev)
			}
			last[k] = i
		})
	}
	for v, n := range seen {
		if n > 1 {
			t.Errorf("record %s is in the log %d times", v, n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for v := range acked {
		if seen[v] != 1 {
			t.Errorf("acknowledged record %s is in the log %d times", v, seen[v])
		}
	}
	t.Logf("%d records acknowledged, %d in the log, 10 kills", len(acked), total)
}

// Without authentication ferry serve listens on loopback only, unless
// told --insecure; SIGTERM stops it cleanly (exit 0, the directory free
// for the next owner).
func TestServeRefusesOpenListenAndStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(buildFerry(t), "--dir", dir, "serve", "--listen", "0.0.0.0:0").CombinedOutput()
	if code := exitCode(err); code != exitBadInput || !strings.Contains(string(out), "--insecure") {
		t.Fatalf("serve on 0.0.0.0: exit %d, %s; want 2 and the --insecure hint", code, out)
	}
	srv := startServe(t, dir, "127.0.0.1:0")
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	if out, err := exec.Command(buildFerry(t), "--dir", dir, "topics", "create", "after", "--partitions", "1").CombinedOutput(); err != nil {
		t.Fatalf("the directory is not free after SIGTERM: %v\n%s", err, out)
	}
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// ferry serve with TLS and SASL: a client that trusts the server's
// certificate and authenticates produces; one that does not speak TLS, or
// does not authenticate, does not.
func TestServeTLSAndSASL(t *testing.T) {
	dir, files := t.TempDir(), t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, secFile := filepath.Join(files, "cert.pem"), filepath.Join(files, "key.pem"), filepath.Join(files, "security.json")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	os.WriteFile(secFile, []byte(`{"users": [{"name": "svc", "password": "pw"}], "acls": [{"principal": "User:svc", "resource": "topic", "name": "*", "operations": ["all"]}]}`), 0o600)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	startServe(t, dir, addr, "--tls-cert", certFile, "--tls-key", keyFile, "--security", secFile, "--auto-create-topics")
	pool := x509.NewCertPool()
	pool.AddCert(must(x509.ParseCertificate(der)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produce := func(opts ...kgo.Opt) error {
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr), kgo.RequestRetries(0), kgo.RetryTimeout(2 * time.Second), kgo.AllowAutoTopicCreation()}, opts...)...)
		if err != nil {
			return err
		}
		defer cl.Close()
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		defer pcancel()
		return cl.ProduceSync(pctx, &kgo.Record{Topic: "secure", Value: []byte("x")}).FirstErr()
	}
	tlsOpt := kgo.DialTLSConfig(&tls.Config{RootCAs: pool})
	auth := kgo.SASL(scram.Auth{User: "svc", Pass: "pw"}.AsSha256Mechanism())
	if err := produce(tlsOpt, auth); err != nil {
		t.Fatalf("over TLS with SCRAM: %v", err)
	}
	if err := produce(auth); err == nil {
		t.Fatal("a client without TLS produced")
	}
	if err := produce(tlsOpt); err == nil {
		t.Fatal("a client without SASL produced")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// ferry serve --metrics exposes the broker's and the log's series.
func TestServeMetrics(t *testing.T) {
	cmd := exec.Command(buildFerry(t), "--dir", t.TempDir(), "serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	rd := bufio.NewReader(out)
	serving, _ := rd.ReadString('\n')
	metricsLine, _ := rd.ReadString('\n')
	addr := strings.TrimSpace(serving[strings.LastIndex(serving, " ")+1:])
	url := strings.TrimSpace(strings.TrimPrefix(metricsLine, "metrics on "))
	if !strings.HasPrefix(url, "http://") {
		t.Fatalf("output %q %q: want the metrics address", serving, metricsLine)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, "m"); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "m", Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`ferry_broker_requests_total{api="Produce"} 1`, "ferry_broker_connections", `ferry_broker_bytes_total{direction="in"}`, "ferry_log_group_commits_total", "ferry_log_healthy 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
