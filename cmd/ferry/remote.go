package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/backend/jetstream"
	"github.com/ferrymq/ferry/backend/kafka"
)

// remote are the flags that point a command elsewhere than --dir: a
// running ferry's admin API (--server), or a backend (--nats, --kafka).
type remote struct {
	server, token                   string
	serverCA, clientCert, clientKey string
	nats, natsPrefix, kafka         string
}

func (r *remote) add(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&r.server, "server", os.Getenv("FERRY_SERVER"), "work through the admin API of a running ferry at this URL (env FERRY_SERVER), e.g. http://127.0.0.1:8080")
	f.StringVar(&r.token, "token", "", "bearer token for --server (env FERRY_TOKEN)")
	f.StringVar(&r.serverCA, "server-ca", "", "PEM CA file that signed the --server's certificate (https)")
	f.StringVar(&r.clientCert, "client-cert", "", "PEM client certificate for --server (mTLS)")
	f.StringVar(&r.clientKey, "client-key", "", "PEM private key of --client-cert")
	f.StringVar(&r.nats, "nats", "", "work on NATS JetStream at this URL instead of --dir")
	f.StringVar(&r.natsPrefix, "nats-prefix", "FERRY", "JetStream stream and bucket name prefix (with --nats)")
	f.StringVar(&r.kafka, "kafka", "", "work on the Kafka brokers (comma-separated host:port) instead of --dir")
}

// where names what the command works on, for errors.
func (r *remote) where(g *globals) string {
	switch {
	case r.server != "":
		return r.server
	case r.nats != "":
		return "NATS " + r.nats
	case r.kafka != "":
		return "Kafka " + r.kafka
	}
	return g.dir
}

// isRemote reports whether a command works elsewhere than --dir.
func (r *remote) isRemote() bool { return r.server != "" || r.nats != "" || r.kafka != "" }

// check refuses more than one target.
func (r *remote) check(cmd *cobra.Command) error {
	n := 0
	for _, s := range []string{r.server, r.nats, r.kafka} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return usageError{fmt.Errorf("--server, --nats and --kafka each name where to work: give one")}
	}
	if n == 1 && cmd.Flags().Changed("dir") {
		name := "kafka"
		if r.server != "" {
			name = "server"
		} else if r.nats != "" {
			name = "nats"
		}
		return usageError{fmt.Errorf("--dir and --%s both name where to work: give one", name)}
	}
	return nil
}

// refuseRemote is for the commands that work only on a data directory.
func (r *remote) refuseRemote(cmd *cobra.Command) error {
	if r.isRemote() {
		return usageError{fmt.Errorf("%s works on a data directory (--dir) only, not through --server, --nats or --kafka", cmd.CommandPath())}
	}
	return nil
}

// api returns what the command works through: the admin API of --server,
// a Service over --nats or --kafka, or else a Service over the --dir log
// (opened for writing if write, created if create). close releases it.
func (g *globals) api(ctx context.Context, cmd *cobra.Command, write, create bool) (api admin.API, close func(), err error) {
	r := g.remote // checked by the root command's PersistentPreRunE
	switch {
	case r.server != "":
		hc, err := r.httpClient()
		if err != nil {
			return nil, nil, err
		}
		token := r.token
		if token == "" {
			token = os.Getenv("FERRY_TOKEN")
		}
		c, err := admin.NewClient(r.server, token, hc)
		if err != nil {
			return nil, nil, usageError{err}
		}
		return c, func() {}, nil
	case r.nats != "" || r.kafka != "":
		b, closeB, err := r.backend(ctx)
		if err != nil {
			return nil, nil, err
		}
		name := "kafka"
		if r.nats != "" {
			name = "jetstream"
		}
		return admin.NewService(b, admin.WithBackendName(name)), closeB, nil
	}
	l, err := g.openDir(ctx, write, create)
	if err != nil {
		return nil, nil, err
	}
	b := embedded.New(l)
	return admin.NewService(b, admin.WithBackendName("embedded")), func() { b.Close(); l.Close() }, nil
}

// backend connects to --nats or --kafka.
func (r *remote) backend(ctx context.Context) (backend.Backend, func(), error) {
	if r.nats != "" {
		nc, err := nats.Connect(r.nats, nats.Name("ferry"))
		if err != nil {
			return nil, nil, fmt.Errorf("--nats %s: %w", r.nats, err)
		}
		b, err := jetstream.New(ctx, nc, jetstream.WithPrefix(r.natsPrefix))
		if err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("--nats %s: %w", r.nats, err)
		}
		return b, func() { b.Close(); nc.Close() }, nil
	}
	b, err := kafka.New(ctx, strings.Split(r.kafka, ","))
	if err != nil {
		return nil, nil, fmt.Errorf("--kafka %s: %w", r.kafka, err)
	}
	return b, func() { b.Close() }, nil
}

// httpClient is the HTTP client of --server, with its TLS files.
func (r *remote) httpClient() (*http.Client, error) {
	if r.serverCA == "" && r.clientCert == "" && r.clientKey == "" {
		return &http.Client{}, nil
	}
	if (r.clientCert == "") != (r.clientKey == "") {
		return nil, usageError{errors.New("--client-cert and --client-key go together")}
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if r.serverCA != "" {
		pem, err := os.ReadFile(r.serverCA)
		if err != nil {
			return nil, usageError{fmt.Errorf("--server-ca: %w", err)}
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, usageError{fmt.Errorf("--server-ca %s: no PEM certificate in it", r.serverCA)}
		}
	}
	if r.clientCert != "" {
		cert, err := tls.LoadX509KeyPair(r.clientCert, r.clientKey)
		if err != nil {
			return nil, usageError{fmt.Errorf("--client-cert %s / --client-key %s: %w", r.clientCert, r.clientKey, err)}
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}, nil
}
