// Publishing with confirms and `mandatory`: a publish has succeeded only when
// the broker acked it and did not return it first.

export class PublishError extends Error {
  name = "PublishError";
}

/**
 * Wraps an amqplib ConfirmChannel. RabbitMQ sends a `basic.return` before the
 * `basic.ack` of the same publish, so a return marks the pending publishes it
 * matches (same exchange, routing key and message id) and their acks then
 * count as failures. Should two pending publishes share all three, both are
 * marked: a failure reported in excess is safe (the delivery is rejected to
 * the dead-letter exchange), a return missed would lose a message.
 */
export class ConfirmPublisher {
  #channel;
  #pending = new Set();

  constructor(channel) {
    this.#channel = channel;
    channel.on("return", (msg) => {
      const key = keyOf(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId);
      for (const entry of this.#pending) if (entry.key === key) entry.returned = true;
    });
  }

  /** Publish and wait for the confirm; rejects with a PublishError if not confirmed. */
  publish(exchange, routingKey, body, options) {
    return new Promise((resolve, reject) => {
      const entry = { key: keyOf(exchange, routingKey, options.messageId), returned: false };
      this.#pending.add(entry);
      const settle = (err) => {
        this.#pending.delete(entry);
        if (err) reject(new PublishError(`not confirmed by the broker (exchange '${exchange}'): ${err.message ?? err}`));
        else if (entry.returned) reject(new PublishError(`unroutable: exchange '${exchange}', routing key '${routingKey}'`));
        else resolve();
      };
      try {
        // The callback runs on ack (err null), nack, or the channel closing.
        this.#channel.publish(exchange, routingKey, body, { ...options, mandatory: true }, settle);
      } catch (err) {
        // A closed channel, or headers too large for amqplib to encode.
        settle(err);
      }
    });
  }
}

const keyOf = (exchange, routingKey, messageId) => `${exchange}\u0000${routingKey}\u0000${messageId ?? ""}`;
