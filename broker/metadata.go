package broker

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// topicID is a topic's Kafka ID: derived from its name (the log has no
// IDs of its own).
func topicID(name string) [16]byte {
	sum := sha256.Sum256([]byte("ferry-topic\x00" + name))
	var id [16]byte
	copy(id[:], sum[:16])
	return id
}

// self is the broker's address as the client should reach it (the
// advertised address was checked by New; a listener's is host:port).
func (c *conn) self() (string, int32) {
	hp := c.s.cfg.advertised
	if hp == "" {
		hp = c.nc.LocalAddr().String()
	}
	host, port, _ := net.SplitHostPort(hp)
	n, _ := strconv.Atoi(port)
	return host, int32(n)
}

func handleMetadata(r *request) kmsg.Response {
	req := r.body.(*kmsg.MetadataRequest)
	resp := kmsg.NewPtrMetadataResponse()
	host, port := r.c.self()
	b := kmsg.NewMetadataResponseBroker()
	b.NodeID, b.Host, b.Port = r.c.s.cfg.nodeID, host, port
	resp.Brokers = []kmsg.MetadataResponseBroker{b}
	resp.ClusterID = &r.c.s.cfg.clusterID
	resp.ControllerID = r.c.s.cfg.nodeID
	l := r.c.s.log
	var names []string
	if req.Topics == nil {
		for _, t := range l.Topics() {
			if r.may("topic", t.Name, "describe") {
				names = append(names, t.Name)
			}
		}
	} else {
		for _, t := range req.Topics {
			switch {
			case t.Topic != nil:
				names = append(names, *t.Topic)
			default:
				name := r.c.s.topicByID(t.TopicID)
				if name == "" || !r.may("topic", name, "describe") {
					// Unknown and not describable answer alike: an ID
					// does not tell which names exist.
					rt := kmsg.NewMetadataResponseTopic()
					rt.TopicID, rt.ErrorCode = t.TopicID, kerr.UnknownTopicID.Code
					resp.Topics = append(resp.Topics, rt)
					continue
				}
				names = append(names, name)
			}
		}
	}
	for _, name := range names {
		rt := kmsg.NewMetadataResponseTopic()
		rt.Topic = kmsg.StringPtr(name)
		rt.TopicID = topicID(name)
		if !r.may("topic", name, "describe") {
			rt.ErrorCode = kerr.TopicAuthorizationFailed.Code
			resp.Topics = append(resp.Topics, rt)
			continue
		}
		info, err := l.Topic(name)
		if errors.Is(err, ferry.ErrTopicNotFound) && req.AllowAutoTopicCreation && r.c.s.cfg.autoCreate && name != "" && r.may("topic", name, "create") {
			if cerr := l.CreateTopic(r.ctx, name, commitlog.TopicConfig{Partitions: 1}); cerr == nil || errors.Is(cerr, ferry.ErrTopicExists) {
				r.c.s.cfg.logger.Info("topic created on first use", "topic", name, "client", r.clientID)
				info, err = l.Topic(name)
			}
		}
		if err != nil {
			rt.ErrorCode = errorCode(err)
			if rt.ErrorCode == kerr.UnknownTopicOrPartition.Code && name == "" {
				rt.ErrorCode = kerr.InvalidTopicException.Code
			}
			resp.Topics = append(resp.Topics, rt)
			continue
		}
		for i := range info.Partitions {
			p := kmsg.NewMetadataResponseTopicPartition()
			p.Partition, p.Leader, p.LeaderEpoch = int32(i), r.c.s.cfg.nodeID, 0
			p.Replicas, p.ISR = []int32{r.c.s.cfg.nodeID}, []int32{r.c.s.cfg.nodeID}
			rt.Partitions = append(rt.Partitions, p)
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}

// topicByID finds the topic of a Kafka topic ID ("" if none has it).
func (s *Server) topicByID(id [16]byte) string {
	for _, t := range s.log.Topics() {
		if topicID(t.Name) == id {
			return t.Name
		}
	}
	return ""
}

func handleFindCoordinator(r *request) kmsg.Response {
	req := r.body.(*kmsg.FindCoordinatorRequest)
	resp := kmsg.NewPtrFindCoordinatorResponse()
	host, port := r.c.self()
	denied := func(key string) int16 {
		switch {
		case req.CoordinatorType == 0 && !r.may("group", key, "describe"):
			return kerr.GroupAuthorizationFailed.Code
		case req.CoordinatorType == 1 && !r.may("transactional_id", key, "describe"):
			return kerr.TransactionalIDAuthorizationFailed.Code
		}
		return 0
	}
	if r.version >= 4 {
		for _, k := range req.CoordinatorKeys {
			c := kmsg.NewFindCoordinatorResponseCoordinator()
			c.Key, c.NodeID, c.Host, c.Port = k, r.c.s.cfg.nodeID, host, port
			if c.ErrorCode = denied(k); c.ErrorCode != 0 {
				c.NodeID, c.Host, c.Port = -1, "", -1
			}
			resp.Coordinators = append(resp.Coordinators, c)
		}
		return resp
	}
	if resp.ErrorCode = denied(req.CoordinatorKey); resp.ErrorCode != 0 {
		resp.NodeID, resp.Port = -1, -1
		return resp
	}
	resp.NodeID, resp.Host, resp.Port = r.c.s.cfg.nodeID, host, port
	return resp
}

// topicConfig maps Kafka topic configs onto the log's.
func topicConfig(partitions int32, configs []kmsg.CreateTopicsRequestTopicConfig) (commitlog.TopicConfig, error) {
	tc := commitlog.TopicConfig{Partitions: int(partitions)}
	for _, c := range configs {
		v := deref(c.Value)
		if c.Value == nil {
			continue
		}
		if err := applyTopicConfig(&tc, c.Name, v); err != nil {
			return tc, err
		}
	}
	return tc, nil
}

// ignoredConfigs are Kafka topic configs about replication and the
// on-disk format of Kafka's own log, accepted and without effect here.
var ignoredConfigs = map[string]bool{
	"min.insync.replicas": true, "unclean.leader.election.enable": true,
	"segment.bytes": true, "segment.ms": true, "message.format.version": true,
	"compression.type": true, "max.message.bytes": true,
}

func applyTopicConfig(tc *commitlog.TopicConfig, name, v string) error {
	switch name {
	case "retention.ms":
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < -1 {
			return fmt.Errorf("retention.ms %q: want -1 (forever) or milliseconds", v)
		}
		tc.RetentionAge = 0
		if ms > 0 {
			tc.RetentionAge = time.Duration(ms) * time.Millisecond
		}
	case "retention.bytes":
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < -1 {
			return fmt.Errorf("retention.bytes %q: want -1 (unbounded) or bytes", v)
		}
		tc.RetentionBytes = max(n, 0)
	case "cleanup.policy":
		switch v {
		case "delete":
			tc.Compact = false
		case "compact":
			tc.Compact = true
		default:
			return fmt.Errorf("cleanup.policy %q: want delete or compact", v)
		}
	case "delete.retention.ms":
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return fmt.Errorf("delete.retention.ms %q: want milliseconds", v)
		}
		tc.TombstoneRetention = time.Duration(ms) * time.Millisecond
	default:
		if !ignoredConfigs[name] {
			return fmt.Errorf("topic config %q: not supported (supported: retention.ms, retention.bytes, cleanup.policy, delete.retention.ms)", name)
		}
	}
	return nil
}

func handleCreateTopics(r *request) kmsg.Response {
	req := r.body.(*kmsg.CreateTopicsRequest)
	resp := kmsg.NewPtrCreateTopicsResponse()
	seen := map[string]bool{}
	for _, t := range req.Topics {
		rt := kmsg.NewCreateTopicsResponseTopic()
		rt.Topic = t.Topic
		fail := func(code int16, msg string) {
			rt.ErrorCode, rt.ErrorMessage = code, kmsg.StringPtr(msg)
		}
		n := t.NumPartitions
		if n == -1 {
			n = 1
		}
		switch {
		case !r.may("topic", t.Topic, "create"):
			fail(kerr.TopicAuthorizationFailed.Code, fmt.Sprintf("not allowed to create topic %q", t.Topic))
		case seen[t.Topic]:
			fail(kerr.InvalidRequest.Code, fmt.Sprintf("topic %q named twice in one request", t.Topic))
		case len(t.ReplicaAssignment) > 0:
			fail(kerr.InvalidReplicaAssignment.Code, "replica assignments: this is a single-node broker")
		case t.ReplicationFactor != -1 && t.ReplicationFactor != 1:
			fail(kerr.InvalidReplicationFactor.Code, fmt.Sprintf("replication factor %d: this is a single-node broker, use 1 or -1", t.ReplicationFactor))
		case n < 1 || n > commitlog.MaxPartitions:
			fail(kerr.InvalidPartitions.Code, fmt.Sprintf("%d partitions: allowed 1 to %d", n, commitlog.MaxPartitions))
		}
		seen[t.Topic] = true
		if rt.ErrorCode == 0 {
			tc, err := topicConfig(n, t.Configs)
			switch {
			case err != nil:
				fail(kerr.InvalidConfig.Code, err.Error())
			case req.ValidateOnly:
				if err := commitlog.ValidateTopicName(t.Topic); err != nil {
					fail(kerr.InvalidTopicException.Code, err.Error())
				} else if _, err := r.c.s.log.Topic(t.Topic); err == nil {
					fail(kerr.TopicAlreadyExists.Code, fmt.Sprintf("topic %q already exists", t.Topic))
				}
			default:
				if err := r.c.s.log.CreateTopic(r.ctx, t.Topic, tc); err != nil {
					fail(errorCode(err), err.Error())
				} else {
					r.c.s.cfg.logger.Info("topic created", "topic", t.Topic, "partitions", n, "client", r.clientID)
				}
			}
		}
		if rt.ErrorCode == 0 {
			rt.TopicID = topicID(t.Topic)
			rt.NumPartitions, rt.ReplicationFactor = n, 1
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}

func handleDeleteTopics(r *request) kmsg.Response {
	req := r.body.(*kmsg.DeleteTopicsRequest)
	resp := kmsg.NewPtrDeleteTopicsResponse()
	names := req.TopicNames
	if r.version >= 6 {
		names = nil
		for _, t := range req.Topics {
			if t.Topic != nil {
				names = append(names, *t.Topic)
			} else if name := r.c.s.topicByID(t.TopicID); name != "" && r.may("topic", name, "describe") {
				names = append(names, name)
			} else {
				rt := kmsg.NewDeleteTopicsResponseTopic()
				rt.TopicID, rt.ErrorCode = t.TopicID, kerr.UnknownTopicID.Code
				resp.Topics = append(resp.Topics, rt)
			}
		}
	}
	for _, name := range names {
		rt := kmsg.NewDeleteTopicsResponseTopic()
		rt.Topic = kmsg.StringPtr(name)
		rt.TopicID = topicID(name)
		if !r.may("topic", name, "delete") {
			rt.ErrorCode, rt.ErrorMessage = kerr.TopicAuthorizationFailed.Code, kmsg.StringPtr("not allowed to delete topic "+name)
		} else if err := r.c.s.log.DeleteTopic(r.ctx, name); err != nil {
			rt.ErrorCode, rt.ErrorMessage = errorCode(err), kmsg.StringPtr(err.Error())
		} else {
			r.c.s.cfg.logger.Info("topic deleted", "topic", name, "client", r.clientID)
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}

// partitionCode is the Kafka error of naming partition p of a topic,
// given the topic's lookup (0 if the partition exists).
func partitionCode(info commitlog.TopicInfo, terr error, p int32) int16 {
	switch {
	case terr != nil:
		return errorCode(terr)
	case p < 0 || int(p) >= len(info.Partitions):
		return kerr.UnknownTopicOrPartition.Code
	}
	return 0
}

// errorCode maps the log's errors to Kafka's.
func errorCode(err error) int16 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ferry.ErrTopicNotFound):
		return kerr.UnknownTopicOrPartition.Code
	case errors.Is(err, ferry.ErrTopicExists):
		return kerr.TopicAlreadyExists.Code
	case errors.Is(err, ferry.ErrOffsetOutOfRange):
		return kerr.OffsetOutOfRange.Code
	case errors.Is(err, ferry.ErrBackpressure):
		return kerr.ThrottlingQuotaExceeded.Code
	case errors.Is(err, ferry.ErrInvalidArgument):
		return kerr.InvalidRequest.Code
	case errors.Is(err, ferry.ErrClosed), errors.Is(err, ferry.ErrLogFailed):
		return kerr.KafkaStorageError.Code
	case errors.Is(err, ferry.ErrCorrupt):
		return kerr.CorruptMessage.Code
	}
	return kerr.UnknownServerError.Code
}
