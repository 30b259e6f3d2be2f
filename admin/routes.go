package admin

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/ferrymq/ferry"
)

// route is one operation of the API: the route table is the one source of
// the mux's patterns, the permission each needs, and the OpenAPI document.
type route struct {
	Method, Path string
	Summary      string
	// Verb is what the caller needs (checked in handle, on the topic or
	// group the request names; "" for routes open to any caller).
	Verb string
	// Query names the query parameters accepted.
	Query []string
	// Body and Response are values of the request and response types (nil:
	// none); Stream says the route also answers with server-sent events.
	Body, Response any
	Stream         bool
	handle         func(*call) (any, error)
}

// dlqQuery are a DLQ list's parameters.
var dlqQuery = append(append([]string{}, filterParams...), "limit", "after")

var routes = []route{
	{Method: "GET", Path: "/health", Summary: "The backend's and the running consumers' health", Response: Health{},
		handle: func(c *call) (any, error) { return c.h.svc.Health(c.r.Context()) }},
	{Method: "GET", Path: "/access", Summary: "What the caller may do: its name, and the verbs it holds on a topic and a group", Query: []string{"topic", "group"},
		Response: Access{},
		handle: func(c *call) (any, error) {
			q, err := c.query("topic", "group")
			if err != nil {
				return nil, err
			}
			a := Access{Name: c.who.Name, Method: c.who.Method, TopicVerbs: []string{}, GroupVerbs: []string{}}
			if a.Topic, err = param(q, "topic"); err != nil {
				return nil, err
			}
			if a.Group, err = param(q, "group"); err != nil {
				return nil, err
			}
			if a.Topic != "" {
				a.TopicVerbs = c.who.Verbs(KindTopic, a.Topic)
			}
			if a.Group != "" {
				a.GroupVerbs = c.who.Verbs(KindGroup, a.Group)
			}
			return a, nil
		}},
	{Method: "GET", Path: "/topics", Summary: "List the topics the caller may read", Verb: VerbRead, Response: []Topic{},
		handle: func(c *call) (any, error) {
			if _, err := c.query(); err != nil {
				return nil, err
			}
			all, err := c.h.svc.Topics(c.r.Context())
			out := []Topic{}
			for _, t := range all {
				if c.who.Allowed(VerbRead, KindTopic, t.Name) {
					out = append(out, t)
				}
			}
			return out, err
		}},
	{Method: "POST", Path: "/topics", Summary: "Create a topic", Verb: VerbAdmin, Body: CreateTopic{}, Response: Topic{},
		handle: func(c *call) (any, error) {
			var ct CreateTopic
			if err := c.decode(&ct, MaxBody); err != nil {
				return nil, err
			}
			if err := c.need(VerbAdmin, KindTopic, ct.Name); err != nil {
				return nil, err
			}
			return c.h.svc.CreateTopic(c.r.Context(), ct)
		}},
	{Method: "GET", Path: "/topics/{topic}", Summary: "Describe a topic: partitions, bounds, retention, size", Verb: VerbRead, Response: Topic{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbRead, KindTopic, topic); err != nil {
				return nil, err
			}
			return c.h.svc.Topic(c.r.Context(), topic)
		}},
	{Method: "PATCH", Path: "/topics/{topic}", Summary: "Change a topic's retention (partitions, compaction and dedup are fixed at creation)", Verb: VerbAdmin,
		Body: AlterTopic{}, Response: Topic{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbAdmin, KindTopic, topic); err != nil {
				return nil, err
			}
			var a AlterTopic
			if err := c.decode(&a, MaxBody); err != nil {
				return nil, err
			}
			return c.h.svc.AlterTopic(c.r.Context(), topic, a)
		}},
	{Method: "DELETE", Path: "/topics/{topic}", Summary: "Delete a topic and its messages", Verb: VerbAdmin, Response: Deleted{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbAdmin, KindTopic, topic); err != nil {
				return nil, err
			}
			if err := c.h.svc.DeleteTopic(c.r.Context(), topic); err != nil {
				return nil, err
			}
			return Deleted{Topic: topic, Deleted: true}, nil
		}},
	{Method: "GET", Path: "/topics/{topic}/partitions/{partition}/messages", Summary: "Browse a partition from a start (earliest, latest, an offset, -N, a time, a duration ago)",
		Verb: VerbRead, Query: []string{"start", "limit"}, Response: MessagePage{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbRead, KindTopic, topic); err != nil {
				return nil, err
			}
			q, err := c.query("start", "limit")
			if err != nil {
				return nil, err
			}
			p, err := c.pathInt("partition", 32)
			if err != nil {
				return nil, err
			}
			n, err := intParam(q, "limit")
			if err != nil {
				return nil, err
			}
			return c.h.svc.Messages(c.r.Context(), topic, int32(p), q.Get("start"), n)
		}},
	{Method: "GET", Path: "/topics/{topic}/partitions/{partition}/messages/{offset}", Summary: "Get the message at an offset", Verb: VerbRead, Response: Message{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbRead, KindTopic, topic); err != nil {
				return nil, err
			}
			p, err := c.pathInt("partition", 32)
			if err != nil {
				return nil, err
			}
			off, err := c.pathInt("offset", 64)
			if err != nil {
				return nil, err
			}
			return c.h.svc.Message(c.r.Context(), topic, int32(p), uint64(off))
		}},
	{Method: "GET", Path: "/topics/{topic}/search", Summary: "Bounded search of a topic by key or header (NAME or NAME=VALUE)", Verb: VerbRead,
		Query: []string{"key", "header", "start", "limit", "scan"}, Response: SearchResult{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbRead, KindTopic, topic); err != nil {
				return nil, err
			}
			q, err := c.query("key", "header", "start", "limit", "scan")
			if err != nil {
				return nil, err
			}
			s := Search{Header: q.Get("header"), Start: q.Get("start")}
			if q.Has("key") {
				k := q.Get("key")
				s.Key = &k
			}
			if s.Limit, err = intParam(q, "limit"); err != nil {
				return nil, err
			}
			if s.Scan, err = intParam(q, "scan"); err != nil {
				return nil, err
			}
			return c.h.svc.Search(c.r.Context(), topic, s)
		}},
	{Method: "GET", Path: "/topics/{topic}/tail", Summary: "Stream a topic's messages from a start on, as server-sent events (event: message)", Verb: VerbRead,
		Query: []string{"start", "partition"}, Response: Message{}, Stream: true,
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbRead, KindTopic, topic); err != nil {
				return nil, err
			}
			q, err := c.query("start", "partition")
			if err != nil {
				return nil, err
			}
			if _, err := ParseStart(q.Get("start"), c.h.svc.now()); err != nil {
				return nil, err
			}
			partition := int32(-1) // every partition
			v, err := param(q, "partition")
			if err != nil {
				return nil, err
			}
			if v != "" {
				p, err := strconv.ParseInt(v, 10, 32)
				if err != nil || p < 0 {
					return nil, fmt.Errorf("query parameter partition=%q: want a partition number, 0 or more: %w", v, ferry.ErrInvalidArgument)
				}
				partition = int32(p)
			}
			if partition >= 0 {
				err = c.h.svc.partition(c.r.Context(), topic, partition)
			} else {
				_, err = c.h.svc.b.Partitions(c.r.Context(), topic)
			}
			if err != nil {
				return nil, err
			}
			c.startStream()
			return nil, c.h.svc.Tail(c.r.Context(), topic, partition, q.Get("start"), func(m Message) error { return c.event("message", m) })
		}},
	{Method: "POST", Path: "/topics/{topic}/messages", Summary: "Produce messages (keys partition them)", Verb: VerbProduce, Body: Produce{}, Response: []Produced{},
		handle: func(c *call) (any, error) {
			topic := c.r.PathValue("topic")
			if err := c.need(VerbProduce, KindTopic, topic); err != nil {
				return nil, err
			}
			var p Produce
			if err := c.decode(&p, MaxProduceBody); err != nil {
				return nil, err
			}
			out, err := c.h.svc.Produce(c.r.Context(), topic, p.Messages)
			c.audit.Counts = fmt.Sprintf("produced %d of %d", len(out), len(p.Messages))
			return out, err
		}},
	{Method: "GET", Path: "/groups", Summary: "List the consumer groups the caller may read, with their lag", Verb: VerbRead, Response: []GroupSummary{},
		handle: func(c *call) (any, error) {
			if _, err := c.query(); err != nil {
				return nil, err
			}
			all, err := c.h.svc.Groups(c.r.Context())
			out := []GroupSummary{}
			for _, g := range all {
				if c.who.Allowed(VerbRead, KindGroup, g.Group) {
					out = append(out, g)
				}
			}
			return out, err
		}},
	{Method: "GET", Path: "/groups/{group}", Summary: "Describe a group: lag per partition, live members, and the state of those this process runs", Verb: VerbRead, Response: Group{},
		handle: func(c *call) (any, error) {
			group := c.r.PathValue("group")
			if err := c.need(VerbRead, KindGroup, group); err != nil {
				return nil, err
			}
			return c.h.svc.Group(c.r.Context(), group)
		}},
	{Method: "GET", Path: "/groups/{group}/lag", Summary: "A group's lag over time, as this process sampled it (a bounded ring; interval empty if it samples none)",
		Verb: VerbRead, Response: LagHistory{},
		handle: func(c *call) (any, error) {
			group := c.r.PathValue("group")
			if err := c.need(VerbRead, KindGroup, group); err != nil {
				return nil, err
			}
			if _, err := c.query(); err != nil {
				return nil, err
			}
			return c.h.svc.LagHistory(group), nil
		}},
	{Method: "DELETE", Path: "/groups/{group}", Summary: "Delete a group's committed offsets; refused while it has live members unless force=true", Verb: VerbAdmin,
		Query: []string{"force"}, Response: GroupDeleted{},
		handle: func(c *call) (any, error) {
			group := c.r.PathValue("group")
			if err := c.need(VerbAdmin, KindGroup, group); err != nil {
				return nil, err
			}
			q, err := c.query("force")
			if err != nil {
				return nil, err
			}
			force := false
			switch v, err := param(q, "force"); {
			case err != nil:
				return nil, err
			case v == "true":
				force = true
			case v != "" && v != "false":
				return nil, fmt.Errorf("query parameter force=%q: want true or false: %w", v, ferry.ErrInvalidArgument)
			}
			if err := c.h.svc.DeleteGroup(c.r.Context(), group, force); err != nil {
				return nil, err
			}
			return GroupDeleted{Group: group, Deleted: true}, nil
		}},
	{Method: "POST", Path: "/groups/{group}/reset", Summary: "Move a group's committed offsets; refused while it has live members unless forced", Verb: VerbReset, Body: Reset{}, Response: []ResetOffset{},
		handle: func(c *call) (any, error) {
			group := c.r.PathValue("group")
			if err := c.need(VerbReset, KindGroup, group); err != nil {
				return nil, err
			}
			var r Reset
			if err := c.decode(&r, MaxBody); err != nil {
				return nil, err
			}
			// A reset makes the group read the topic again: the caller
			// must be allowed to reset it, too.
			if err := c.need(VerbReset, KindTopic, r.Topic); err != nil {
				return nil, err
			}
			out, err := c.h.svc.ResetGroup(c.r.Context(), group, r)
			c.audit.Counts = fmt.Sprintf("reset %d partition(s) of %s to %s", len(out), r.Topic, r.To)
			return out, err
		}},
	{Method: "GET", Path: "/dlq", Summary: "List the dead-letter queues the caller may read, with their unresolved entries counted by state and class",
		Verb: VerbRead, Response: []DLQSummary{},
		handle: func(c *call) (any, error) {
			if _, err := c.query(); err != nil {
				return nil, err
			}
			// Only the queues the caller may read are read at all.
			return c.h.svc.dlqs(c.r.Context(), func(q string) bool { return c.who.Allowed(VerbRead, KindTopic, q) })
		}},
	{Method: "GET", Path: "/dlq/{queue}/entries", Summary: "List a DLQ's entries (dead and requested unless state says), filtered", Verb: VerbRead,
		Query: dlqQuery, Response: []DeadLetter{},
		handle: func(c *call) (any, error) {
			queue := c.r.PathValue("queue")
			if err := c.need(VerbRead, KindTopic, queue); err != nil {
				return nil, err
			}
			q, err := url.ParseQuery(c.r.URL.RawQuery)
			if err != nil {
				return nil, fmt.Errorf("query: %v: %w", err, ferry.ErrInvalidArgument)
			}
			f, err := ParseFilter(q, "limit", "after") // refuses unknown and repeated parameters
			if err != nil {
				return nil, err
			}
			for _, name := range []string{"limit", "after"} {
				if len(q[name]) > 1 {
					return nil, fmt.Errorf("query parameter %q given %d times: at most once: %w", name, len(q[name]), ferry.ErrInvalidArgument)
				}
			}
			var page Page
			if page.After, err = param(q, "after"); err != nil {
				return nil, err
			}
			if page.Limit, err = intParam(q, "limit"); err != nil {
				return nil, err
			}
			return c.h.svc.DeadLetters(c.r.Context(), queue, f, page)
		}},
	{Method: "GET", Path: "/dlq/{queue}/entries/{id}", Summary: "Show one entry with its original message and why it failed", Verb: VerbRead, Response: DeadLetter{},
		handle: func(c *call) (any, error) {
			queue := c.r.PathValue("queue")
			if err := c.need(VerbRead, KindTopic, queue); err != nil {
				return nil, err
			}
			return c.h.svc.DeadLetter(c.r.Context(), queue, c.r.PathValue("id"))
		}},
	{Method: "POST", Path: "/dlq/{queue}/redrive", Summary: "Have the entries handled again by their partition's owner, whole keys in order (or move them to a topic); progress as server-sent events",
		Verb: VerbRedrive, Body: Redrive{}, Response: RedriveResult{}, Stream: true,
		handle: func(c *call) (any, error) {
			queue := c.r.PathValue("queue")
			if err := c.need(VerbRedrive, KindTopic, queue); err != nil {
				return nil, err
			}
			var r Redrive
			if err := c.decode(&r, MaxBody); err != nil {
				return nil, err
			}
			c.audit.Filter = &r.Filter
			if r.To != "" {
				if err := c.need(VerbProduce, KindTopic, r.To); err != nil {
					return nil, err
				}
			}
			total := 0
			var progress func(Progress)
			stream := c.wantsStream()
			if stream {
				// Checked before the stream starts, so that bad input gets
				// its status (400, 403, 404), not an error event.
				if _, _, err := c.h.svc.checkRedrive(c.r.Context(), queue, r); err != nil {
					return nil, err
				}
				c.startStream()
			}
			progress = func(p Progress) {
				total = p.Total
				if stream && (p.Done == p.Total || p.Done%max(1, p.Total/100) == 0) {
					c.event("progress", p)
				}
			}
			res, err := c.h.svc.Redrive(c.r.Context(), queue, r, progress)
			c.audit.Counts = fmt.Sprintf("redriven %d of %d", res.Entries, max(total, res.Entries))
			if stream && err == nil {
				c.event("result", res)
			}
			return res, err
		}},
	{Method: "POST", Path: "/dlq/{queue}/purge", Summary: "Mark the entries purged: they no longer list or redrive, and a key parked behind them moves on",
		Verb: VerbPurge, Body: Purge{}, Response: PurgeResult{},
		handle: func(c *call) (any, error) {
			queue := c.r.PathValue("queue")
			if err := c.need(VerbPurge, KindTopic, queue); err != nil {
				return nil, err
			}
			var p Purge
			if err := c.decode(&p, MaxBody); err != nil {
				return nil, err
			}
			c.audit.Filter = &p.Filter
			res, err := c.h.svc.Purge(c.r.Context(), queue, p)
			c.audit.Counts = fmt.Sprintf("purged %d", res.Purged)
			return res, err
		}},
	{Method: "POST", Path: "/replay", Summary: "Copy a range of a topic into another, once however often it runs", Verb: VerbReplay, Body: Replay{}, Response: ReplayResult{},
		handle: func(c *call) (any, error) {
			var r Replay
			if err := c.decode(&r, MaxBody); err != nil {
				return nil, err
			}
			if err := c.need(VerbReplay, KindTopic, r.To); err != nil {
				return nil, err
			}
			c.audit.Target = "topic:" + r.From + " -> topic:" + r.To
			if err := c.need(VerbRead, KindTopic, r.From); err != nil {
				return nil, err
			}
			res, err := c.h.svc.Replay(c.r.Context(), r)
			c.audit.Counts = fmt.Sprintf("copied %d, %d already there", res.Copied, res.AlreadyThere)
			return res, err
		}},
	{Method: "GET", Path: "/audit", Summary: "List audit records, newest last", Verb: VerbRead, Query: []string{"actor", "verb", "result", "since", "limit"}, Response: []AuditRecord{},
		handle: func(c *call) (any, error) {
			if err := c.need(VerbRead, KindTopic, c.h.svc.audit); err != nil {
				return nil, err
			}
			q, err := c.query("actor", "verb", "result", "since", "limit")
			if err != nil {
				return nil, err
			}
			aq := AuditQuery{Actor: q.Get("actor"), Verb: q.Get("verb"), Result: q.Get("result"), Since: q.Get("since")}
			if aq.Limit, err = intParam(q, "limit"); err != nil {
				return nil, err
			}
			return c.h.svc.AuditLog(c.r.Context(), aq)
		}},
}

// Deleted is what a topic deletion returns.
type Deleted struct {
	Topic   string `json:"topic"`
	Deleted bool   `json:"deleted"`
}

// Produce is the body of a produce request.
type Produce struct {
	Messages []Message `json:"messages"`
}
