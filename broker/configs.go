package broker

import (
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/commitlog"
)

// topicConfigs are a topic's configs in Kafka's names: the ones the log
// keeps (see applyTopicConfig).
func topicConfigs(tc commitlog.TopicConfig) []kmsg.DescribeConfigsResponseResourceConfig {
	retention := int64(-1)
	if tc.RetentionAge > 0 {
		retention = tc.RetentionAge.Milliseconds()
	}
	bytes := int64(-1)
	if tc.RetentionBytes > 0 {
		bytes = tc.RetentionBytes
	}
	policy := "delete"
	if tc.Compact {
		policy = "compact"
	}
	tomb := tc.TombstoneRetention
	if tomb == 0 {
		tomb = 24 * time.Hour // the log's default
	}
	entry := func(name, value string, typ kmsg.ConfigType, isDefault bool) kmsg.DescribeConfigsResponseResourceConfig {
		c := kmsg.NewDescribeConfigsResponseResourceConfig()
		c.Name, c.Value, c.ConfigType, c.IsDefault = name, kmsg.StringPtr(value), typ, isDefault
		c.Source = kmsg.ConfigSourceDynamicTopicConfig
		if isDefault {
			c.Source = kmsg.ConfigSourceDefaultConfig
		}
		return c
	}
	return []kmsg.DescribeConfigsResponseResourceConfig{
		entry("cleanup.policy", policy, kmsg.ConfigTypeList, !tc.Compact),
		entry("delete.retention.ms", strconv.FormatInt(tomb.Milliseconds(), 10), kmsg.ConfigTypeLong, tc.TombstoneRetention == 0),
		entry("retention.bytes", strconv.FormatInt(bytes, 10), kmsg.ConfigTypeLong, tc.RetentionBytes == 0),
		entry("retention.ms", strconv.FormatInt(retention, 10), kmsg.ConfigTypeLong, tc.RetentionAge == 0),
	}
}

// handleDescribeConfigs answers topics' configs (the log's, in Kafka's
// names) and, for the broker, none. IncrementalAlterConfigs and
// AlterConfigs change them (alter.go).
func handleDescribeConfigs(r *request) kmsg.Response {
	req := r.body.(*kmsg.DescribeConfigsRequest)
	resp := kmsg.NewPtrDescribeConfigsResponse()
	for _, res := range req.Resources {
		rr := kmsg.NewDescribeConfigsResponseResource()
		rr.ResourceType, rr.ResourceName = res.ResourceType, res.ResourceName
		switch res.ResourceType {
		case kmsg.ConfigResourceTypeTopic:
			if !r.may("topic", res.ResourceName, "describe") {
				rr.ErrorCode = kerr.TopicAuthorizationFailed.Code
				break
			}
			info, err := r.c.s.log.Topic(res.ResourceName)
			if err != nil {
				rr.ErrorCode, rr.ErrorMessage = errorCode(err), kmsg.StringPtr(err.Error())
				break
			}
			for _, c := range topicConfigs(info.Config) {
				if len(res.ConfigNames) == 0 || slices.Contains(res.ConfigNames, c.Name) {
					rr.Configs = append(rr.Configs, c)
				}
			}
		case kmsg.ConfigResourceTypeBroker, kmsg.ConfigResourceTypeBrokerLogger:
			// Nothing configurable through the protocol.
		default:
			rr.ErrorCode = kerr.InvalidRequest.Code
			rr.ErrorMessage = kmsg.StringPtr("resource type " + res.ResourceType.String() + ": topics and brokers are described")
		}
		resp.Resources = append(resp.Resources, rr)
	}
	return resp
}

// handleCreatePartitions refuses to add partitions, saying why: the log
// maps each key to a partition by the topic's partition count, which
// therefore never changes (a key's order would break). The same count is
// no change and answers success.
func handleCreatePartitions(r *request) kmsg.Response {
	req := r.body.(*kmsg.CreatePartitionsRequest)
	resp := kmsg.NewPtrCreatePartitionsResponse()
	for _, t := range req.Topics {
		rt := kmsg.NewCreatePartitionsResponseTopic()
		rt.Topic = t.Topic
		info, err := r.c.s.log.Topic(t.Topic)
		switch {
		case !r.may("topic", t.Topic, "create"):
			rt.ErrorCode = kerr.TopicAuthorizationFailed.Code
		case err != nil:
			rt.ErrorCode, rt.ErrorMessage = errorCode(err), kmsg.StringPtr(err.Error())
		case int(t.Count) != len(info.Partitions):
			rt.ErrorCode = kerr.InvalidPartitions.Code
			rt.ErrorMessage = kmsg.StringPtr("topic " + t.Topic + " has " + strconv.Itoa(len(info.Partitions)) + " partitions, fixed at creation: ferry's log maps each key to a partition by that count, so changing it would break the order of keys; create a new topic and replay into it (ferry replay)")
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}
