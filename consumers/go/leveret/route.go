package leveret

import (
	"encoding/json"
	"fmt"
	"sort"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

type handler struct {
	fn       HandlerFunc
	versions map[int64]bool
	tracked  bool // reports its status to leveret.status
}

// router holds a queue's handlers and checks deliveries against them: steps 1
// to 5 of the contract's consuming algorithm, with no I/O.
type router struct {
	queue    string
	maxSize  int
	schemas  *Schemas
	handlers map[string]*handler
}

// tracked lists the types whose handlers are tracked.
func (r *router) tracked() []string {
	var types []string
	for t, h := range r.handlers {
		if h.tracked {
			types = append(types, t)
		}
	}
	sort.Strings(types)
	return types
}

// resolve checks a delivery in the contract's order (size, content type, type,
// version, body) and returns its task and handler, or a *MessageError naming
// the permanent reason.
func (r *router) resolve(d *amqp.Delivery) (*Task, HandlerFunc, error) {
	if len(d.Body) > r.maxSize {
		return nil, nil, invalid(ReasonTooLarge,
			"body is %d bytes, over the limit of %d", len(d.Body), r.maxSize)
	}
	if !IsJSON(d.ContentType) {
		return nil, nil, invalid(ReasonInvalidContentType,
			"content type %q is not %q", d.ContentType, ContentType)
	}
	if d.Type == "" {
		return nil, nil, invalid(ReasonUnknownType, "message has no type property")
	}
	h, ok := r.handlers[d.Type]
	if !ok {
		return nil, nil, invalid(ReasonUnknownType,
			"no handler for message type %q on queue %q", d.Type, r.queue)
	}
	version, ok := Version(d.Headers)
	if !ok {
		return nil, nil, invalid(ReasonUnknownVersion,
			"%s: missing or non-integer %s header", d.Type, HeaderVersion)
	}
	if !h.versions[version] {
		return nil, nil, invalid(ReasonUnknownVersion,
			"%s v%d is not handled on %q (accepted: %v)", d.Type, version, r.queue, h.sortedVersions())
	}
	if !utf8.Valid(d.Body) || !json.Valid(d.Body) {
		return nil, nil, invalid(ReasonInvalidJSON, "%s v%d: body is not UTF-8 JSON", d.Type, version)
	}
	if err := r.schemas.Validate(d.Type, version, d.Body); err != nil {
		return nil, nil, &MessageError{Reason: ReasonSchemaViolation, Err: err}
	}
	return &Task{
		Queue:         r.queue,
		MessageID:     d.MessageId,
		Type:          d.Type,
		Version:       version,
		Attempt:       RetryCount(d.Headers) + 1,
		CorrelationID: d.CorrelationId,
		Redelivered:   d.Redelivered,
		Headers:       d.Headers,
		Body:          d.Body,
		schemas:       r.schemas,
	}, h.fn, nil
}

func (h *handler) sortedVersions() []int64 {
	out := make([]int64, 0, len(h.versions))
	for v := range h.versions {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// check makes sure that every handled version has a loadable schema.
func (r *router) check() error {
	if len(r.handlers) == 0 {
		return fmt.Errorf("no handlers: there is nothing to consume")
	}
	for name, h := range r.handlers {
		for _, v := range h.sortedVersions() {
			if _, err := r.schemas.Load(name, v); err != nil {
				return err
			}
		}
	}
	return nil
}
