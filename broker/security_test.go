package broker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/ferrymq/ferry/broker"
)

func securityFile(t *testing.T, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "security.json")
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

const securityJSON = `{
  "users": [{"name": "alice", "password": "alice-secret"}, {"name": "admin", "password": "admin-secret"}],
  "super_users": ["admin"],
  "acls": [
    {"principal": "User:alice", "resource": "topic", "name": "orders", "operations": ["read", "write"]},
    {"principal": "User:alice", "resource": "group", "name": "billing", "operations": ["read"]}
  ]
}`

// With users and ACLs, a client authenticates with SASL (PLAIN, SCRAM-SHA-256
// or SCRAM-SHA-512) before anything but ApiVersions, and may do only what
// the ACLs allow: a denied request gets Kafka's authorization error and
// changes nothing.
func TestSASLAndACLs(t *testing.T) {
	sec, err := broker.LoadSecurity(securityFile(t, securityJSON, 0o600))
	if err != nil {
		t.Fatal(err)
	}
	tb := startBroker(t, broker.WithSecurity(sec))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	as := func(m sasl.Mechanism, opts ...kgo.Opt) *kgo.Client {
		return tb.client(append([]kgo.Opt{kgo.SASL(m), kgo.RequestRetries(0), kgo.RetryTimeout(2 * time.Second)}, opts...)...)
	}
	admin := as(scram.Auth{User: "admin", Pass: "admin-secret"}.AsSha512Mechanism())
	adm := kadm.NewClient(admin)
	for _, topic := range []string{"orders", "secret"} {
		if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
			t.Fatalf("the super user creates %s: %v", topic, err)
		}
	}

	t.Run("unauthenticated", func(t *testing.T) {
		cl := tb.client(kgo.RequestRetries(0), kgo.RetryTimeout(time.Second))
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		defer scancel()
		if _, err := kmsgMetadata(sctx, cl); err == nil {
			t.Fatal("a client without SASL got metadata")
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		for _, m := range []sasl.Mechanism{plain.Auth{User: "alice", Pass: "nope"}.AsMechanism(), scram.Auth{User: "alice", Pass: "nope"}.AsSha256Mechanism(), scram.Auth{User: "mallory", Pass: "x"}.AsSha256Mechanism()} {
			cl := as(m)
			sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := kmsgMetadata(sctx, cl)
			scancel()
			if !errors.Is(err, kerr.SaslAuthenticationFailed) {
				t.Errorf("%s with a wrong password: %v, want SASL_AUTHENTICATION_FAILED", m.Name(), err)
			}
		}
	})
	for _, m := range []sasl.Mechanism{plain.Auth{User: "alice", Pass: "alice-secret"}.AsMechanism(), scram.Auth{User: "alice", Pass: "alice-secret"}.AsSha256Mechanism(), scram.Auth{User: "alice", Pass: "alice-secret"}.AsSha512Mechanism()} {
		t.Run(m.Name(), func(t *testing.T) {
			cl := as(m)
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte(m.Name())}).FirstErr(); err != nil {
				t.Fatalf("alice produces to orders: %v", err)
			}
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("x")}).FirstErr(); !errors.Is(err, kerr.TopicAuthorizationFailed) {
				t.Fatalf("alice produces to secret: %v, want TOPIC_AUTHORIZATION_FAILED", err)
			}
			if _, end, _ := tb.log.Bounds("secret", 0); end != 0 {
				t.Fatalf("a denied produce wrote: secret ends at %d", end)
			}
			aadm := kadm.NewClient(cl)
			if _, err := aadm.CreateTopic(ctx, 1, 1, nil, "alices"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
				t.Fatalf("alice creates a topic: %v, want TOPIC_AUTHORIZATION_FAILED", err)
			}
			topics, err := aadm.ListTopics(ctx)
			if err != nil || len(topics.Names()) != 1 || topics.Names()[0] != "orders" {
				t.Fatalf("alice lists topics %v (%v); want only orders", topics.Names(), err)
			}
			if err := aadm.CommitAllOffsets(ctx, "billing", kadm.OffsetsFromRecords(kgo.Record{Topic: "orders", Partition: 0, Offset: 0})); err != nil {
				t.Fatalf("alice commits for billing: %v", err)
			}
			if err := aadm.CommitAllOffsets(ctx, "other", kadm.OffsetsFromRecords(kgo.Record{Topic: "orders", Partition: 0, Offset: 0})); !errors.Is(err, kerr.GroupAuthorizationFailed) {
				t.Fatalf("alice commits for other: %v, want GROUP_AUTHORIZATION_FAILED", err)
			}
			if _, ok := tb.log.CommittedOffset("other", "orders", 0); ok {
				t.Fatal("a denied commit was recorded")
			}
		})
	}
}

func kmsgMetadata(ctx context.Context, cl *kgo.Client) (any, error) {
	return kadm.NewClient(cl).ListTopics(ctx)
}

// A security file with passwords readable by others, an unknown field or a
// bad ACL is refused with what is wrong.
func TestLoadSecurityRefusesBadFiles(t *testing.T) {
	cases := map[string]struct {
		body string
		mode os.FileMode
		want string
	}{
		"world readable":  {securityJSON, 0o644, "chmod 600"},
		"unknown field":   {`{"users": [], "acl": []}`, 0o600, `unknown field "acl"`},
		"bad operation":   {`{"acls": [{"principal": "User:a", "resource": "topic", "name": "t", "operations": ["fly"]}]}`, 0o600, `operation "fly"`},
		"bad principal":   {`{"acls": [{"principal": "alice", "resource": "topic", "name": "t", "operations": ["read"]}]}`, 0o600, `principal "alice"`},
		"empty password":  {`{"users": [{"name": "a", "password": ""}]}`, 0o600, "empty password"},
		"duplicate users": {`{"users": [{"name": "a", "password": "x"}, {"name": "a", "password": "y"}]}`, 0o600, "named twice"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := broker.LoadSecurity(securityFile(t, c.body, c.mode))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("LoadSecurity: %v, want an error saying %q", err, c.want)
			}
		})
	}
}
