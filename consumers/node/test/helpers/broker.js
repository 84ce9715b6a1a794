// The broker the integration tests use: LEVERET_TEST_URL, else the local one.
//
// A URL without credentials logs in as RabbitMQ's default user, as amqplib
// does; the login is written into the URL so that the tests checking that no
// output shows the password check a real one.

import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const LOCAL = "amqp://127.0.0.1:5672/";

// amqplib's own rule for the login of a URL without one (its lib/connect.js, which
// the package's exports leave out; a file path reaches it), so that no login is
// written here.
const require = createRequire(import.meta.url);
const { credentialsFromUrl } = require(join(dirname(require.resolve("amqplib")), "lib", "connect.js"));

export function withLogin(raw) {
  const url = new URL(raw);
  if (url.username) return raw;
  const { username, password } = credentialsFromUrl(url);
  url.username = encodeURIComponent(username);
  url.password = encodeURIComponent(password);
  return url.toString();
}

export const BROKER_URL = withLogin(process.env.LEVERET_TEST_URL || LOCAL);
