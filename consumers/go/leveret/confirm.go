package leveret

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrNotConfirmed is returned when the broker nacked a publish, returned it as
// unroutable, or the channel closed before the confirm arrived.
var ErrNotConfirmed = errors.New("publish not confirmed")

// ErrUnroutable is returned when the broker returned a publish: no queue is
// bound for its exchange and routing key. It is an ErrNotConfirmed too.
var ErrUnroutable = fmt.Errorf("%w: returned as unroutable", ErrNotConfirmed)

// confirmer publishes on a channel in confirm mode, mandatory, and tells each
// caller whether its own message was confirmed. Many goroutines may publish at
// once: their confirms are pipelined, and a basic.return (which the broker
// sends before the ack of the same message) marks the oldest outstanding
// publish with the same message id, exchange and routing key.
type confirmer struct {
	ch *amqp.Channel

	mu      sync.Mutex
	seq     uint64 // delivery tag of the last publish
	pending map[uint64]*outstanding
	closed  error

	returns  chan amqp.Return
	confirms chan amqp.Confirmation
}

type outstanding struct {
	messageID, exchange, key string
	returned                 *amqp.Return
	done                     chan error
}

// newConfirmer puts ch in confirm mode and starts following its confirms.
func newConfirmer(ch *amqp.Channel) (*confirmer, error) {
	if err := ch.Confirm(false); err != nil {
		return nil, err
	}
	c := &confirmer{
		ch:       ch,
		pending:  map[uint64]*outstanding{},
		returns:  ch.NotifyReturn(make(chan amqp.Return, 64)),
		confirms: ch.NotifyPublish(make(chan amqp.Confirmation, 256)),
	}
	go c.follow()
	return c, nil
}

// Publish sends msg with mandatory set and waits for the broker's verdict.
// It returns nil only for an ack of a message that was not returned.
func (c *confirmer) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	done := make(chan error, 1)
	c.mu.Lock()
	if c.closed != nil {
		c.mu.Unlock()
		return c.closed
	}
	// Registered before the publish: its confirm cannot be resolved before the
	// lock is released. The client numbers confirms from 1, one per publish
	// that was sent.
	tag := c.seq + 1
	c.pending[tag] = &outstanding{messageID: msg.MessageId, exchange: exchange, key: key, done: done}
	if err := c.ch.PublishWithContext(ctx, exchange, key, true, false, msg); err != nil {
		delete(c.pending, tag)
		c.mu.Unlock()
		return fmt.Errorf("%w: %v", ErrNotConfirmed, err)
	}
	c.seq = tag
	c.mu.Unlock()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrNotConfirmed, ctx.Err())
	}
}

// follow matches returns and confirms to publishes until the channel closes.
func (c *confirmer) follow() {
	for {
		select {
		case r, ok := <-c.returns:
			if ok {
				c.markReturned(r)
			} else {
				c.returns = nil
			}
		case conf, ok := <-c.confirms:
			if !ok {
				c.fail(fmt.Errorf("%w: the channel closed", ErrNotConfirmed))
				return
			}
			// A return always precedes the ack of its message, and the client
			// queued it before this confirm: take every queued return first.
			c.drainReturns()
			c.resolve(conf)
		}
	}
}

func (c *confirmer) drainReturns() {
	for c.returns != nil {
		select {
		case r, ok := <-c.returns:
			if !ok {
				c.returns = nil
				return
			}
			c.markReturned(r)
		default:
			return
		}
	}
}

func (c *confirmer) markReturned(r amqp.Return) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var oldest uint64
	for tag, p := range c.pending {
		if p.returned == nil && p.messageID == r.MessageId && p.exchange == r.Exchange &&
			p.key == r.RoutingKey && (oldest == 0 || tag < oldest) {
			oldest = tag
		}
	}
	if oldest != 0 {
		ret := r
		c.pending[oldest].returned = &ret
	}
}

func (c *confirmer) resolve(conf amqp.Confirmation) {
	c.mu.Lock()
	p, ok := c.pending[conf.DeliveryTag]
	delete(c.pending, conf.DeliveryTag)
	c.mu.Unlock()
	switch {
	case !ok:
	case !conf.Ack:
		p.done <- fmt.Errorf("%w: the broker nacked it", ErrNotConfirmed)
	case p.returned != nil:
		p.done <- fmt.Errorf("%w (%d %s)", ErrUnroutable, p.returned.ReplyCode, p.returned.ReplyText)
	default:
		p.done <- nil
	}
}

func (c *confirmer) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = err
	for tag, p := range c.pending {
		p.done <- err
		delete(c.pending, tag)
	}
}
