package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/metrics"
)

func newServeCmd(g *globals) *cobra.Command {
	var (
		listen, advertise, durability    string
		tlsCert, tlsKey, tlsCA, security string
		metricsAddr                      string
		insecure, autoCreate             bool
		adm                              adminFlags
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the data directory to Kafka clients (one node, fsync before ack)",
		Long: `serve owns the data directory and answers the Kafka protocol on --listen, so
that any Kafka client (franz-go, librdkafka and kcat, Java) and ferry's own
runtime (backend/kafka) share the log across processes. Every record a
produce with acks >= 1 acknowledged is fsynced first (--durability always).

It is one node: topics have replication factor 1. With --security FILE
(users and ACLs, see below) clients authenticate with SASL PLAIN or
SCRAM-SHA-256/512 and may do only what the ACLs allow; --tls-cert and
--tls-key serve TLS (--tls-client-ca also requires client certificates).
Without both, it listens only on a loopback address, unless --insecure.
SIGTERM or Ctrl-C stops it: requests already read are answered, then the
log is closed.

The security file (JSON, mode 600):
  {"users": [{"name": "alice", "password": "..."}], "super_users": ["admin"],
   "acls": [{"principal": "User:alice", "resource": "topic", "name": "orders",
             "operations": ["read", "write"]}]}
Resources: topic, group, transactional_id; "name": "*" or "prefix": true
match more; operations: read, write, describe, create, delete, alter (topic configs), all.

--admin ADDR (127.0.0.1:8080) also serves the admin API there (see ferry
admin --help; --auth and --admin-tls-* configure it).

It prints "serving DIR on ADDR" once it listens (and "admin API on URL").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := commitlog.ParseDurability(durability)
			if err != nil {
				return usageError{err}
			}
			host, _, err := net.SplitHostPort(listen)
			if err != nil {
				return usageError{fmt.Errorf("--listen %q: want host:port: %w", listen, err)}
			}
			if (tlsCert == "") != (tlsKey == "") || tlsCA != "" && tlsCert == "" {
				return usageError{fmt.Errorf("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")}
			}
			if !isLoopback(host) && !insecure && (security == "" || tlsCert == "") {
				return usageError{fmt.Errorf("--listen %s: not a loopback address, and clients would not be authenticated over TLS: give --security and --tls-cert/--tls-key, listen on 127.0.0.1, or pass --insecure", listen)}
			}
			var sec *broker.Security
			if security != "" {
				if sec, err = broker.LoadSecurity(security); err != nil {
					return usageError{err}
				}
			}
			var tlsConf *tls.Config
			if tlsCert != "" {
				if tlsConf, err = serverTLS(tlsCert, tlsKey, tlsCA); err != nil {
					return usageError{err}
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			reg := prometheus.NewRegistry()
			m, err := metrics.New(reg)
			if err != nil {
				return err
			}
			l, err := g.openDir(ctx, true, true, commitlog.WithDurability(d), commitlog.WithLogger(logger), commitlog.WithObserver(m))
			if err != nil {
				return err
			}
			m.WatchLog(l)
			opts := []broker.Opt{broker.WithLogger(logger), broker.WithAutoCreateTopics(autoCreate), broker.WithObserver(m)}
			metricsLine := ""
			if metricsAddr != "" {
				mln, err := net.Listen("tcp", metricsAddr)
				if err != nil {
					l.Close()
					return fmt.Errorf("--metrics %s: %w", metricsAddr, err)
				}
				hs := &http.Server{Handler: metrics.Handler(reg, metrics.Check("log", l.Healthy)), ReadHeaderTimeout: 5 * time.Second}
				go hs.Serve(mln)
				defer hs.Close()
				metricsLine = fmt.Sprintf("metrics on http://%s/metrics\n", mln.Addr())
			}
			if sec != nil {
				opts = append(opts, broker.WithSecurity(sec))
			}
			if advertise != "" {
				opts = append(opts, broker.WithAdvertisedAddr(advertise))
			}
			srv, err := broker.New(l, opts...)
			if err != nil {
				l.Close()
				return usageError{err}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				l.Close()
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			if tlsConf != nil {
				ln = tls.NewListener(ln, tlsConf)
			}
			adminLine := ""
			var admB *embedded.Backend
			adminDone := make(chan error, 1)
			adminDone <- nil
			if adm.listen != "" {
				aln, auth, url, err := adm.listener(insecure)
				if err != nil {
					ln.Close()
					l.Close()
					return err
				}
				admB = embedded.New(l)
				svc := admin.NewService(admB, admin.WithBackendName("embedded"), admin.WithLogger(logger))
				go svc.RecordLag(ctx, admin.DefaultLagInterval)
				h := admin.NewHandler(svc, auth)
				<-adminDone
				go func() { adminDone <- serveAdmin(ctx, aln, h, logger) }()
				adminLine = fmt.Sprintf("admin API on %s\nconsole on %s%s\n", url, url, admin.ConsolePath)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s on %s\n%s%s", l.Dir(), ln.Addr(), metricsLine, adminLine)
			serveErr := make(chan error, 1)
			go func() { serveErr <- srv.Serve(ctx, ln) }()
			select {
			case <-ctx.Done():
			case err = <-serveErr:
			}
			logger.Info("stopping: answering the requests read, then closing the log")
			srv.Close()
			stop()
			if aerr := <-adminDone; aerr != nil && !errors.Is(aerr, http.ErrServerClosed) {
				err = errors.Join(err, aerr)
			}
			if admB != nil {
				admB.Close()
			}
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9092", "address to listen on (host:port; port 0 picks one)")
	cmd.Flags().StringVar(&advertise, "advertise", "", "host:port clients are told to connect to (default: the address they connected to)")
	cmd.Flags().StringVar(&durability, "durability", "always", "when appends are acknowledged: always (after fsync), interval, none")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "allow a non-loopback --listen without authentication over TLS")
	cmd.Flags().StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics and /healthz on this address (host:port)")
	cmd.Flags().StringVar(&security, "security", "", "JSON file of users and ACLs: clients authenticate with SASL and are authorized")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "PEM certificate file: serve TLS")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "PEM private key file of --tls-cert")
	cmd.Flags().StringVar(&tlsCA, "tls-client-ca", "", "PEM CA file: require client certificates it signed")
	adm.add(cmd, "admin", "")
	cmd.Flags().BoolVar(&autoCreate, "auto-create-topics", false, "create a topic a client names in a metadata request (Kafka's auto.create.topics.enable)")
	return cmd
}

// serverTLS loads the server's certificate and, with ca, requires client
// certificates that ca signed.
func serverTLS(certFile, keyFile, ca string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", certFile, keyFile, err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificate in it", ca)
		}
		conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
