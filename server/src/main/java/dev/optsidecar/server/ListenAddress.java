package dev.optsidecar.server;

import java.nio.file.Path;

/**
 * Where the server listens: a TCP {@code host:port}, or a Unix domain socket {@code unix:PATH}
 * (also written {@code unix:///absolute/path}), for control traffic between co-located processes
 * without TCP.
 */
public sealed interface ListenAddress {
    /** A TCP address; port 0 picks a free one. */
    record Tcp(String host, int port) implements ListenAddress {
        @Override
        public String toString() {
            return host.contains(":") ? "[" + host + "]:" + port : host + ":" + port;
        }
    }

    /** A Unix domain socket at {@code path}. */
    record Unix(Path path) implements ListenAddress {
        @Override
        public String toString() {
            return "unix://" + path.toAbsolutePath();
        }
    }

    /** Parses {@code host:port}, {@code [v6]:port}, {@code unix:PATH} or {@code unix://PATH}. */
    static ListenAddress parse(String text) {
        if (text.startsWith("unix:")) {
            String path = text.startsWith("unix://") ? text.substring("unix://".length()) : text.substring("unix:".length());
            if (path.isEmpty()) {
                throw new IllegalArgumentException("'" + text + "' names no socket path (unix:///run/optsidecar.sock)");
            }
            return new Unix(Path.of(path));
        }
        int colon = text.lastIndexOf(':');
        if (colon < 0) {
            throw new IllegalArgumentException("'" + text + "' is neither HOST:PORT nor unix:PATH");
        }
        String host = text.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
            host = host.substring(1, host.length() - 1);
        }
        int port;
        try {
            port = Integer.parseInt(text.substring(colon + 1));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("'" + text + "': the port is not a number");
        }
        if (host.isEmpty() || port < 0 || port > 65535) {
            throw new IllegalArgumentException("'" + text + "': expected HOST:PORT with a port from 0 to 65535");
        }
        return new Tcp(host, port);
    }
}
