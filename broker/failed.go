package broker

import "github.com/twmb/franz-go/pkg/kmsg"

// failed reports whether an answer carries an error code (for the
// request-error metric): at its top or in one of its partitions.
func failed(resp kmsg.Response) bool {
	switch r := resp.(type) {
	case nil:
		return false
	case *kmsg.ProduceResponse:
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				if p.ErrorCode != 0 {
					return true
				}
			}
		}
	case *kmsg.FetchResponse:
		if r.ErrorCode != 0 {
			return true
		}
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				if p.ErrorCode != 0 {
					return true
				}
			}
		}
	case *kmsg.OffsetCommitResponse:
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				if p.ErrorCode != 0 {
					return true
				}
			}
		}
	case *kmsg.JoinGroupResponse:
		return r.ErrorCode != 0
	case *kmsg.SyncGroupResponse:
		return r.ErrorCode != 0
	case *kmsg.HeartbeatResponse:
		return r.ErrorCode != 0
	case *kmsg.EndTxnResponse:
		return r.ErrorCode != 0
	case *kmsg.InitProducerIDResponse:
		return r.ErrorCode != 0
	case *kmsg.SASLAuthenticateResponse:
		return r.ErrorCode != 0
	case *kmsg.ApiVersionsResponse:
		return r.ErrorCode != 0
	case *kmsg.CreateTopicsResponse:
		for _, t := range r.Topics {
			if t.ErrorCode != 0 {
				return true
			}
		}
	}
	return false
}
