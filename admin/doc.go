// Package admin is ferry's control plane: the operations an operator
// performs on a running system (topics, messages, consumer groups, dead
// letters, replay, audit), over any backend.Backend, and an HTTP JSON API
// for them with authentication, per-verb authorization and an audit log.
//
// Three pieces, one job each:
//
//   - Service performs the operations in Go, over a backend (and, for live
//     state, a Registry of the process's running consumers). The ferry
//     command line calls it directly for --dir, --nats and --kafka.
//   - Handler serves Service as the JSON API under /api/v1 (OpenAPI
//     document at /api/v1/openapi.json): it authenticates the caller
//     (Auth), checks the verb the route needs on its topic or group, and
//     appends every mutating request, allowed or denied, to the audit
//     topic as a CloudEvents record.
//   - Client calls a Handler over HTTP and returns what Service returns,
//     so a command prints the same whether it runs here or on a server.
//
// A DLQ redrive back to the source never publishes to the source topic: it
// writes request markers, and the consumer that owns each entry's source
// partition handles the key's entries in order (dlq.Queue.Redrive), in
// whichever process it runs. So a redrive through the API can neither
// overtake a key's later messages nor duplicate one.
//
// A service that owns an embedded log mounts the API in one line:
//
//	mux.Handle("/api/", admin.NewHandler(admin.NewService(b, admin.WithRegistry(reg)), auth))
package admin
