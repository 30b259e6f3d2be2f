package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// configChange is one config of an alter request: set to value, or
// deleted (back to its default).
type configChange struct {
	name   string
	value  string
	delete bool
}

// alterTopicConfig applies changes to a topic's config in the log (or,
// with validateOnly, only checks them), as an operator's alter: the
// log's retention changes, and a change to what is fixed at creation
// (compaction, partitions) is refused naming it. It returns a Kafka error
// code and why, or 0.
func (s *Server) alterTopicConfig(ctx context.Context, topic string, changes []configChange, validateOnly bool) (int16, string) {
	info, err := s.log.Topic(topic)
	if err != nil {
		return errorCode(err), err.Error()
	}
	c := info.Config
	for _, ch := range changes {
		if ch.delete {
			var def commitlog.TopicConfig
			switch ch.name {
			case "retention.ms":
				c.RetentionAge = def.RetentionAge
			case "retention.bytes":
				c.RetentionBytes = def.RetentionBytes
			case "delete.retention.ms":
				c.TombstoneRetention = def.TombstoneRetention
			case "cleanup.policy":
				c.Compact = false
			default:
				if !ignoredConfigs[ch.name] {
					return kerr.InvalidConfig.Code, fmt.Sprintf("topic config %q: not supported (supported: retention.ms, retention.bytes, cleanup.policy, delete.retention.ms)", ch.name)
				}
			}
			continue
		}
		if err := applyTopicConfig(&c, ch.name, ch.value); err != nil {
			return kerr.InvalidConfig.Code, err.Error()
		}
	}
	if validateOnly {
		err = s.log.CheckAlterTopic(topic, c)
	} else {
		err = s.log.AlterTopic(ctx, topic, c)
	}
	switch {
	case errors.Is(err, ferry.ErrInvalidArgument):
		return kerr.InvalidConfig.Code, err.Error()
	case err != nil:
		return errorCode(err), err.Error()
	}
	return 0, ""
}

// handleIncrementalAlterConfigs sets or deletes topic configs (the ones
// the log keeps; see applyTopicConfig). APPEND and SUBTRACT, which are
// for list configs, are refused: the only list config, cleanup.policy,
// holds one value here.
func handleIncrementalAlterConfigs(r *request) kmsg.Response {
	req := r.body.(*kmsg.IncrementalAlterConfigsRequest)
	resp := kmsg.NewPtrIncrementalAlterConfigsResponse()
	for _, res := range req.Resources {
		rr := kmsg.NewIncrementalAlterConfigsResponseResource()
		rr.ResourceType, rr.ResourceName = res.ResourceType, res.ResourceName
		var changes []configChange
		code, why := int16(0), ""
		for _, c := range res.Configs {
			switch c.Op {
			case kmsg.IncrementalAlterConfigOpSet:
				if c.Value == nil {
					code, why = kerr.InvalidConfig.Code, fmt.Sprintf("%s: SET without a value", c.Name)
				} else {
					changes = append(changes, configChange{name: c.Name, value: *c.Value})
				}
			case kmsg.IncrementalAlterConfigOpDelete:
				changes = append(changes, configChange{name: c.Name, delete: true})
			default:
				code, why = kerr.InvalidConfig.Code, fmt.Sprintf("%s: operation %s: only SET and DELETE (cleanup.policy holds one value)", c.Name, c.Op)
			}
		}
		rr.ErrorCode, rr.ErrorMessage = r.alter(res.ResourceType, res.ResourceName, changes, req.ValidateOnly, code, why)
		resp.Resources = append(resp.Resources, rr)
	}
	return resp
}

// handleAlterConfigs replaces a topic's configs (the older, non
// incremental request): the configs named are set, every other the log
// keeps goes back to its default.
func handleAlterConfigs(r *request) kmsg.Response {
	req := r.body.(*kmsg.AlterConfigsRequest)
	resp := kmsg.NewPtrAlterConfigsResponse()
	for _, res := range req.Resources {
		rr := kmsg.NewAlterConfigsResponseResource()
		rr.ResourceType, rr.ResourceName = res.ResourceType, res.ResourceName
		named := map[string]bool{}
		var changes []configChange
		code, why := int16(0), ""
		for _, c := range res.Configs {
			named[c.Name] = true
			if c.Value == nil {
				code, why = kerr.InvalidConfig.Code, fmt.Sprintf("%s: no value", c.Name)
				continue
			}
			changes = append(changes, configChange{name: c.Name, value: *c.Value})
		}
		for _, name := range []string{"retention.ms", "retention.bytes", "delete.retention.ms", "cleanup.policy"} {
			if !named[name] {
				changes = append(changes, configChange{name: name, delete: true})
			}
		}
		rr.ErrorCode, rr.ErrorMessage = r.alter(res.ResourceType, res.ResourceName, changes, req.ValidateOnly, code, why)
		resp.Resources = append(resp.Resources, rr)
	}
	return resp
}

// alter answers one resource of an alter request: the changes are applied
// unless reading them failed already (code, why).
func (r *request) alter(typ kmsg.ConfigResourceType, name string, changes []configChange, validateOnly bool, code int16, why string) (int16, *string) {
	if code == 0 {
		code, why = r.alterResource(typ, name, changes, validateOnly)
	}
	if why == "" {
		return code, nil
	}
	return code, kmsg.StringPtr(why)
}

// alterResource checks the principal may alter the resource and applies
// the changes to a topic; broker configs are not alterable.
func (r *request) alterResource(typ kmsg.ConfigResourceType, name string, changes []configChange, validateOnly bool) (int16, string) {
	switch typ {
	case kmsg.ConfigResourceTypeTopic:
		if !r.may("topic", name, "alter") {
			return kerr.TopicAuthorizationFailed.Code, ""
		}
		return r.c.s.alterTopicConfig(r.ctx, name, changes, validateOnly)
	case kmsg.ConfigResourceTypeBroker, kmsg.ConfigResourceTypeBrokerLogger:
		return kerr.InvalidRequest.Code, "broker configs are not alterable through the protocol: ferry serve takes its settings as flags"
	}
	return kerr.InvalidRequest.Code, "resource type " + typ.String() + ": only topic configs are alterable"
}

// handleDeleteGroups deletes groups that have no members: the
// coordinator forgets them and their committed offsets are deleted from
// the log. A group with members is NON_EMPTY_GROUP; one with neither
// members nor offsets GROUP_ID_NOT_FOUND.
func handleDeleteGroups(r *request) kmsg.Response {
	req := r.body.(*kmsg.DeleteGroupsRequest)
	resp := kmsg.NewPtrDeleteGroupsResponse()
	s := r.c.s
	offsets := s.log.Groups()
	for _, g := range req.Groups {
		rg := kmsg.NewDeleteGroupsResponseGroup()
		rg.Group = g
		switch {
		case !r.may("group", g, "delete"):
			rg.ErrorCode = groupDenied
		default:
			code := s.groups.Delete(g)
			if code == kerr.GroupIDNotFound.Code && len(offsets[g]) > 0 {
				code = 0 // no members since the server started, offsets in the log
			}
			if code == 0 {
				if err := s.log.DeleteOffsets(r.ctx, g, ""); err != nil {
					code = errorCode(err)
				}
			}
			rg.ErrorCode = code
		}
		resp.Groups = append(resp.Groups, rg)
	}
	return resp
}

// handleOffsetDelete deletes a group's committed offsets on partitions.
// While the group has members the request is refused for every partition
// (GROUP_SUBSCRIBED_TO_TOPIC): ferry does not look into what each member
// subscribed, and a live member would commit over the deletion.
func handleOffsetDelete(r *request) kmsg.Response {
	req := r.body.(*kmsg.OffsetDeleteRequest)
	resp := kmsg.NewPtrOffsetDeleteResponse()
	s := r.c.s
	if !r.may("group", req.Group, "delete") {
		resp.ErrorCode = groupDenied
		return resp
	}
	offsets := s.log.Groups()[req.Group]
	active := s.groups.Active(req.Group)
	if len(offsets) == 0 && !active {
		resp.ErrorCode = kerr.GroupIDNotFound.Code
		return resp
	}
	for _, t := range req.Topics {
		rt := kmsg.NewOffsetDeleteResponseTopic()
		rt.Topic = t.Topic
		info, terr := s.log.Topic(t.Topic)
		var parts []int32
		for _, p := range t.Partitions {
			rp := kmsg.NewOffsetDeleteResponseTopicPartition()
			rp.Partition = p.Partition
			switch {
			case !r.may("topic", t.Topic, "read"):
				rp.ErrorCode = kerr.TopicAuthorizationFailed.Code
			case partitionCode(info, terr, p.Partition) != 0:
				rp.ErrorCode = partitionCode(info, terr, p.Partition)
			case active:
				rp.ErrorCode = kerr.GroupSubscribedToTopic.Code
			default:
				parts = append(parts, p.Partition)
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		if len(parts) > 0 {
			if err := s.log.DeleteOffsets(r.ctx, req.Group, t.Topic, parts...); err != nil {
				for i := range rt.Partitions {
					if rt.Partitions[i].ErrorCode == 0 {
						rt.Partitions[i].ErrorCode = errorCode(err)
					}
				}
			}
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}
