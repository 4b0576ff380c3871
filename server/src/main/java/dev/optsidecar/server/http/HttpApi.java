package dev.optsidecar.server.http;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.protobuf.MessageOrBuilder;
import com.google.protobuf.util.JsonFormat;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsParameters;
import com.sun.net.httpserver.HttpsServer;
import dev.optsidecar.proto.v1.ListSnapshotsResponse;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.ServerTls;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelRegistry;
import io.prometheus.metrics.exporter.httpserver.MetricsHandler;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * The server's HTTP endpoint (--http-port): Prometheus metrics at {@code /metrics}, a small JSON
 * read API for the dashboard under {@code /api/}, and the dashboard's static files, packaged in
 * the jar under {@code dashboard/}, at {@code /}. TLS with the API's certificates when it has
 * them. The JSON is what the gRPC API answers, in protobuf's JSON mapping (field names as in the
 * proto; 64-bit integers as strings):
 *
 * <ul>
 *   <li>{@code GET /api/models}: {@code {"models": [ModelInfo...]}}, as Describe answers for each;</li>
 *   <li>{@code GET /api/models/NAME}: its ModelInfo; with {@code ?brief=true} (both routes) without
 *       its tensors and state, whose size grows with the tensors and clients (what the dashboard
 *       polls);</li>
 *   <li>{@code GET /api/models/NAME/figures?from_version=&max_versions=}: a FiguresResponse page;</li>
 *   <li>{@code GET /api/models/NAME/history?from_version=&max_versions=}: a HistoryResponse page;</li>
 *   <li>{@code GET /api/models/NAME/snapshots?verify=}: a ListSnapshotsResponse (empty without --state-dir);
 *       {@code verify=false} checks each snapshot's manifest and its files' presence and sizes without
 *       reading the data (what the dashboard polls), {@code true} (the default) reads every checksum.</li>
 * </ul>
 *
 * Every data route (metrics and the API) passes {@link HttpAccess#check} first, in {@link #handle}.
 */
public final class HttpApi implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(HttpApi.class.getName());
    /** Where the dashboard's files lie on the classpath. */
    static final String ASSETS = "dashboard/";
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final JsonFormat.Printer PROTO_JSON = JsonFormat.printer().preservingProtoFieldNames()
            .omittingInsignificantWhitespace();
    private static final Map<String, String> CONTENT_TYPES = Map.of(
            "html", "text/html; charset=utf-8", "js", "text/javascript; charset=utf-8",
            "css", "text/css; charset=utf-8", "json", "application/json", "svg", "image/svg+xml",
            "png", "image/png", "ico", "image/x-icon");

    private final HttpServer server;
    private final ExecutorService threads;
    private final ModelRegistry registry;
    private final Persistence persistence;
    private final HttpAccess access;
    private final MetricsHandler metrics;

    private HttpApi(HttpServer server, ModelRegistry registry, Persistence persistence, HttpAccess access) {
        this.server = server;
        this.registry = registry;
        this.persistence = persistence;
        this.access = access;
        this.metrics = new MetricsHandler(registry.metrics().registry());
        this.threads = Executors.newFixedThreadPool(2, r -> {
            Thread t = new Thread(r, "optsidecar-http");
            t.setDaemon(true);
            return t;
        });
        server.setExecutor(threads);
        server.createContext("/", this::handle);
    }

    /**
     * Listens on {@code address}, with TLS when {@code tls} is not null (client certificates
     * required when it has a client CA), serving what {@code registry} and {@code persistence}
     * (null without a state directory) hold.
     */
    public static HttpApi start(InetSocketAddress address, ServerTls tls, ModelRegistry registry,
                                Persistence persistence, HttpAccess access) throws IOException {
        HttpServer server;
        if (tls == null) {
            server = HttpServer.create(address, 0);
        } else {
            HttpsServer https = HttpsServer.create(address, 0);
            boolean clientCertificates = tls.requiresClientCertificates();
            https.setHttpsConfigurator(new HttpsConfigurator(tls.sslContext()) {
                @Override
                public void configure(HttpsParameters params) {
                    javax.net.ssl.SSLParameters ssl = getSSLContext().getDefaultSSLParameters();
                    ssl.setNeedClientAuth(clientCertificates);
                    params.setSSLParameters(ssl);
                }
            });
            server = https;
        }
        HttpApi api = new HttpApi(server, registry, persistence, access);
        server.start();
        return api;
    }

    /** The port it listens on (the one picked, for port 0). */
    public int port() {
        return server.getAddress().getPort();
    }

    /** Routes a request: the access check for data routes, then metrics, the JSON API or a static file. */
    private void handle(HttpExchange exchange) throws IOException {
        try (exchange) {
            if (!exchange.getRequestMethod().equals("GET") && !exchange.getRequestMethod().equals("HEAD")) {
                error(exchange, 405, "only GET and HEAD are served");
                return;
            }
            String path = exchange.getRequestURI().getPath();
            if (path.equals("/metrics") || path.equals("/api") || path.startsWith("/api/")) {
                // Split before decoding: a model name may hold '/', sent as %2F.
                List<String> parts = apiParts(exchange.getRequestURI().getRawPath());
                String model = parts.size() >= 2 ? parts.get(1) : null;
                String authorization = exchange.getRequestHeaders().getFirst("Authorization");
                // The model list is filtered by model instead: any known token may ask for it.
                boolean list = parts.size() == 1 && parts.get(0).equals("models");
                HttpAccess.Decision decision = list
                        ? access.check(authorization, HttpAccess.READER, null) == HttpAccess.Decision.UNAUTHENTICATED
                        ? HttpAccess.Decision.UNAUTHENTICATED : HttpAccess.Decision.ALLOW
                        : access.check(authorization, HttpAccess.READER, model);
                if (decision == HttpAccess.Decision.UNAUTHENTICATED) {
                    exchange.getResponseHeaders().set("WWW-Authenticate", "Bearer");
                    error(exchange, 401, "a bearer token is required");
                    return;
                }
                if (decision == HttpAccess.Decision.FORBIDDEN) {
                    error(exchange, 403, "the token may not read " + (model == null ? "this" : "model '" + model + "'"));
                    return;
                }
                if (path.equals("/metrics")) {
                    metrics.handle(exchange);
                } else {
                    api(exchange, parts, authorization);
                }
                return;
            }
            asset(exchange, path);
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "HTTP " + exchange.getRequestURI() + " failed", e);
        }
    }

    /** The path's parts after /api: ["models"], ["models", NAME], ["models", NAME, "figures"]. */
    private static List<String> apiParts(String path) {
        if (!path.startsWith("/api/")) {
            return List.of();
        }
        String[] raw = path.substring("/api/".length()).split("/", -1);
        List<String> parts = new java.util.ArrayList<>();
        for (String p : raw) {
            parts.add(URLDecoder.decode(p.replace("+", "%2B"), StandardCharsets.UTF_8)); // a path's '+' is itself
        }
        return parts;
    }

    private void api(HttpExchange exchange, List<String> parts, String authorization) throws IOException {
        Map<String, String> query = query(exchange.getRequestURI().getRawQuery());
        try {
            if (parts.isEmpty() || !parts.get(0).equals("models") || parts.size() > 3) {
                error(exchange, 404, "no such API route; see /api/models");
            } else if (parts.size() == 1) {
                boolean brief = flag(query, "brief", false);
                StringBuilder body = new StringBuilder("{\"models\":[");
                String sep = "";
                for (Model m : registry.models()) {
                    if (!access.mayList(authorization, m.name())) {
                        continue;
                    }
                    try {
                        body.append(sep).append(PROTO_JSON.print(describe(m, brief)));
                        sep = ",";
                    } catch (OptError e) {
                        // deleted while listed: left out
                    }
                }
                send(exchange, 200, "application/json", body.append("]}").toString());
            } else {
                Model m = registry.get(parts.get(1), "model");
                String what = parts.size() == 2 ? "" : parts.get(2);
                MessageOrBuilder answer = switch (what) {
                    case "" -> describe(m, flag(query, "brief", false));
                    case "figures" -> m.figures(number(query, "from_version"), (int) number(query, "max_versions"));
                    case "history" -> m.history(number(query, "from_version"), (int) number(query, "max_versions"));
                    case "snapshots" -> persistence == null ? ListSnapshotsResponse.getDefaultInstance()
                            : ListSnapshotsResponse.newBuilder().addAllSnapshots(persistence.store().list(m.name(),
                            flag(query, "verify", true))).build();
                    default -> null;
                };
                if (answer == null) {
                    error(exchange, 404, "no such API route: a model has figures, history and snapshots");
                } else {
                    send(exchange, 200, "application/json", PROTO_JSON.print(answer));
                }
            }
        } catch (OptError e) {
            int status = switch (e.kind()) {
                case INVALID_ARGUMENT -> 400;
                case NOT_FOUND -> 404;
                case UNAVAILABLE -> 503;
                default -> 500;
            };
            ObjectNode body = JSON.createObjectNode().put("error", e.getMessage()).put("reason", e.reason().name());
            if (!e.field().isEmpty()) {
                body.put("field", e.field());
            }
            send(exchange, status, "application/json", JSON.writeValueAsString(body));
        }
    }

    private static ModelInfo describe(Model m, boolean brief) {
        ModelInfo info = m.describe();
        return brief ? info.toBuilder().clearTensors().clearState().build() : info;
    }

    /** A query parameter as an unsigned number (0 when absent); anything else is INVALID_ARGUMENT naming it. */
    private static long number(Map<String, String> query, String name) {
        String value = query.get(name);
        if (value == null || value.isEmpty()) {
            return 0;
        }
        try {
            long n = Long.parseUnsignedLong(value);
            if (name.equals("max_versions") && n > Integer.MAX_VALUE) {
                throw new NumberFormatException();
            }
            return n;
        } catch (NumberFormatException e) {
            throw OptError.invalid("%s: '%s' is not a version count or number", name,
                    value.length() > 40 ? value.substring(0, 40) + "..." : value);
        }
    }

    /** A query parameter as true or false ({@code fallback} when absent); anything else is INVALID_ARGUMENT naming it. */
    private static boolean flag(Map<String, String> query, String name, boolean fallback) {
        String value = query.get(name);
        if (value == null || value.isEmpty()) {
            return fallback;
        }
        if (value.equals("true") || value.equals("false")) {
            return Boolean.parseBoolean(value);
        }
        throw OptError.invalid("%s: '%s' is not true or false", name,
                value.length() > 40 ? value.substring(0, 40) + "..." : value);
    }

    private static Map<String, String> query(String raw) {
        Map<String, String> out = new HashMap<>();
        if (raw == null) {
            return out;
        }
        for (String pair : raw.split("&")) {
            int eq = pair.indexOf('=');
            String key = URLDecoder.decode(eq < 0 ? pair : pair.substring(0, eq), StandardCharsets.UTF_8);
            out.put(key, eq < 0 ? "" : URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8));
        }
        return out;
    }

    /** A dashboard file from the jar: / is index.html; paths that climb out of the folder are not served. */
    private static void asset(HttpExchange exchange, String path) throws IOException {
        String name = path.equals("/") ? "index.html" : path.substring(1);
        if (name.isEmpty() || name.contains("..") || name.startsWith("/") || name.contains("\\")) {
            error(exchange, 404, "not found");
            return;
        }
        try (InputStream in = HttpApi.class.getClassLoader().getResourceAsStream(ASSETS + name)) {
            if (in == null) {
                error(exchange, 404, "not found: " + path);
                return;
            }
            String extension = name.substring(name.lastIndexOf('.') + 1);
            byte[] body = in.readAllBytes();
            exchange.getResponseHeaders().set("Content-Type",
                    CONTENT_TYPES.getOrDefault(extension, "application/octet-stream"));
            write(exchange, 200, body);
        }
    }

    private static void error(HttpExchange exchange, int status, String message) throws IOException {
        send(exchange, status, "application/json", JSON.writeValueAsString(JSON.createObjectNode().put("error", message)));
    }

    private static void send(HttpExchange exchange, int status, String type, String body) throws IOException {
        exchange.getResponseHeaders().set("Content-Type", type);
        exchange.getResponseHeaders().set("Cache-Control", "no-store");
        write(exchange, status, body.getBytes(StandardCharsets.UTF_8));
    }

    private static void write(HttpExchange exchange, int status, byte[] body) throws IOException {
        boolean head = exchange.getRequestMethod().equals("HEAD");
        exchange.sendResponseHeaders(status, head ? -1 : body.length == 0 ? -1 : body.length);
        if (!head) {
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        }
    }

    /** Stops listening; requests in progress get a second to finish. */
    @Override
    public void close() {
        server.stop(1);
        threads.shutdownNow();
    }
}
