package dev.optsidecar.server.http;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import dev.optsidecar.server.model.Limits;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicBoolean;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The HTTP endpoint of a server on real sockets: /metrics scraped while a trainer steps, each
 * per-model figure checked against what the run did (steps, bytes of its float32 tensors, its lr,
 * its last gradient's norm, journal appends, a snapshot); the JSON API; the access hook.
 */
class MetricsEndpointTest {
    private static final long MEMORY_LIMIT = 256L << 20;
    private static final int A = 1000;
    private static final int B = 10;
    private static final int STEPS = 20;
    private final HttpClient http = HttpClient.newHttpClient();
    private final ObjectMapper json = new ObjectMapper();
    private SocketServer server;
    private HttpApi api;
    private OptSidecarClient client;

    @BeforeEach
    void start(@TempDir Path dir) throws Exception {
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.FSYNC, 0, null, true);
        server = SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)), 2, MEMORY_LIMIT, durable,
                List.of(), Limits.DEFAULTS);
        api = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null, server.server().registry(),
                server.server().persistence(), HttpAccess.ALLOW_ALL);
        client = OptSidecarClient.connect("127.0.0.1:" + server.port());
    }

    @AfterEach
    void stop() {
        if (client != null) {
            client.close();
        }
        if (api != null) {
            api.close();
        }
        if (server != null) {
            server.close();
        }
    }

    @Test
    void metricsMoveWhileATrainerSteps() throws Exception {
        client.register(TestData.spec("m", "Adam", TestData.hp("lr", 0.01), A, B).build(),
                TestData.data(TestData.random(A, 1), TestData.random(B, 2)));
        Map<String, Double> before = scrape();
        assertEquals(0.0, value(before, "optsidecar_trainers_attached", "model", "m"));
        assertEquals((double) MEMORY_LIMIT, value(before, "optsidecar_memory_limit_bytes"));
        assertTrue(value(before, "optsidecar_memory_reserved_bytes") >= (A + B) * 4.0);
        assertTrue(before.keySet().stream().anyMatch(k -> k.startsWith("jvm_memory_used_bytes")),
                "JVM metrics are exposed");

        AtomicBoolean trainerOpen = new AtomicBoolean();
        List<float[][]> grads = new ArrayList<>();
        for (int t = 0; t < STEPS; t++) {
            grads.add(new float[][] {TestData.random(A, 100 + t), TestData.random(B, 200 + t)});
        }
        CompletableFuture<StepResult> run = CompletableFuture.supplyAsync(() -> {
            StepResult last = null;
            try (Trainer trainer = client.trainer("m", "t1")) {
                float[][] weights = {new float[A], new float[B]};
                for (float[][] g : grads) {
                    last = trainer.step(g, weights);
                    trainerOpen.set(true);
                    sleep(20);
                }
                // Still attached: the scrape below this step sees one trainer.
                sleep(300);
            }
            return last;
        });
        List<Double> stepsSeen = new ArrayList<>();
        boolean sawTrainer = false;
        while (!run.isDone()) {
            Map<String, Double> during = scrape();
            stepsSeen.add(valueOr(during, 0, "optsidecar_steps_applied_total", "model", "m"));
            if (trainerOpen.get() && !run.isDone()) {
                sawTrainer |= valueOr(during, 0, "optsidecar_trainers_attached", "model", "m") == 1.0;
            }
            sleep(15);
        }
        StepResult last = run.join();
        for (int i = 1; i < stepsSeen.size(); i++) {
            assertTrue(stepsSeen.get(i) >= stepsSeen.get(i - 1), "the steps counter never goes back: " + stepsSeen);
        }
        assertTrue(stepsSeen.stream().anyMatch(n -> n > 0 && n < STEPS), "a scrape saw the run midway: " + stepsSeen);
        assertTrue(sawTrainer, "a scrape during the run saw the trainer attached");

        Map<String, Double> after = scrape();
        assertEquals(STEPS, value(after, "optsidecar_steps_applied_total", "model", "m"));
        long stepBytes = (A + B) * 4L; // float32 on the wire, both ways
        assertEquals(STEPS * stepBytes, value(after, "optsidecar_step_received_bytes_total",
                "model", "m", "transport", "grpc", "dtype", "float32"));
        assertEquals(STEPS * stepBytes, value(after, "optsidecar_step_sent_bytes_total",
                "model", "m", "transport", "grpc", "dtype", "float32"));
        for (String phase : List.of("receive", "apply", "send")) {
            assertEquals(STEPS, value(after, "optsidecar_step_phase_seconds_count", "model", "m", "phase", phase),
                    phase);
            assertTrue(value(after, "optsidecar_step_phase_seconds_sum", "model", "m", "phase", phase) > 0, phase);
        }
        assertEquals(0.01, value(after, "optsidecar_learning_rate", "model", "m", "group", "default"));
        assertEquals(last.getGradNorm(), value(after, "optsidecar_gradient_norm", "model", "m"));
        assertEquals(norm(grads.get(STEPS - 1)), value(after, "optsidecar_gradient_norm", "model", "m"), 1e-9);
        assertEquals(STEPS, value(after, "optsidecar_step_staleness_versions_count", "model", "m"));
        assertEquals(STEPS, value(after, "optsidecar_journal_append_seconds_count", "model", "m"));
        assertEquals(STEPS, value(after, "optsidecar_journal_fsync_seconds_count", "model", "m"));
        assertEquals(0.0, value(after, "optsidecar_trainers_attached", "model", "m"));

        double beforeSnapshot = System.currentTimeMillis() / 1e3;
        double snapshotsBefore = value(after, "optsidecar_snapshot_duration_seconds_count", "model", "m");
        SnapshotInfo snapshot = client.snapshot("m");
        Map<String, Double> snapped = scrape();
        assertEquals(snapshotsBefore + 1, value(snapped, "optsidecar_snapshot_duration_seconds_count", "model", "m"));
        assertEquals((double) snapshot.getBytes(), value(snapped, "optsidecar_snapshot_bytes", "model", "m"));
        double success = value(snapped, "optsidecar_snapshot_last_success_timestamp_seconds", "model", "m");
        assertTrue(success >= beforeSnapshot - 1 && success <= System.currentTimeMillis() / 1e3 + 1, "" + success);

        // A refused step is counted by its reason, and changes nothing.
        try (Trainer trainer = client.trainer("m", "t2")) {
            Trainer.StepOptions bad = new Trainer.StepOptions().figure("not a name!", 1.0);
            assertThrows(StatusRuntimeException.class, () -> trainer.step(TestData.data(grads.get(0)[0],
                    grads.get(0)[1]), TestData.data(new float[A], new float[B]), bad));
        }
        Map<String, Double> refused = scrape();
        assertEquals(1.0, value(refused, "optsidecar_steps_rejected_total", "model", "m", "reason", "INVALID_FIELD"));
        assertEquals(STEPS, value(refused, "optsidecar_steps_applied_total", "model", "m"));

        client.delete("m");
        Map<String, Double> deleted = scrape();
        assertTrue(deleted.keySet().stream().noneMatch(k -> k.contains("model=\"m\"")),
                "a deleted model's series are gone");
    }

    @Test
    void jsonApiAnswersWhatTheGrpcApiDoes() throws Exception {
        client.register(TestData.spec("j", "RAdam", TestData.hp("lr", 0.003), 5).build(),
                TestData.data(TestData.random(5, 1)));
        try (Trainer trainer = client.trainer("j", "t")) {
            float[][] weights = {new float[5]};
            for (int t = 1; t <= 3; t++) {
                trainer.log(Map.of("loss", 1.0 / t)).step(new float[][] {TestData.random(5, t)}, weights);
            }
        }
        JsonNode models = json.readTree(get("/api/models").body());
        assertEquals(1, models.get("models").size());
        assertEquals("j", models.get("models").get(0).get("name").asText());
        assertEquals("3", models.get("models").get(0).get("version").asText());
        assertEquals(client.describe("j").getVersion(), json.readTree(get("/api/models/j").body()).get("version").asLong());

        JsonNode figures = json.readTree(get("/api/models/j/figures?from_version=2").body());
        assertEquals(2, figures.get("versions").size());
        assertEquals(0.5, figures.get("versions").get(0).get("figures").get("loss").asDouble());
        assertEquals(1.0 / 3, figures.get("versions").get(1).get("figures").get("loss").asDouble());
        assertEquals(0.003, figures.get("versions").get(0).get("groups").get(0).get("lr").asDouble());
        JsonNode page = json.readTree(get("/api/models/j/figures?max_versions=1").body());
        assertEquals(1, page.get("versions").size());
        assertEquals("2", page.get("next_from_version").asText());
        assertEquals(3, json.readTree(get("/api/models/j/history").body()).get("versions").size());
        assertEquals(client.listSnapshots("j").size(),
                json.readTree(get("/api/models/j/snapshots").body()).path("snapshots").size());

        HttpResponse<String> missing = get("/api/models/nope/figures");
        assertEquals(404, missing.statusCode());
        assertEquals("MODEL_NOT_FOUND", json.readTree(missing.body()).get("reason").asText());
        HttpResponse<String> badNumber = get("/api/models/j/figures?from_version=-1");
        assertEquals(400, badNumber.statusCode());
        assertEquals("from_version", json.readTree(badNumber.body()).get("field").asText());
        assertEquals(404, get("/api/nothing").statusCode());
        assertEquals(404, get("/no-such-file.js").statusCode());
    }

    @Test
    void everyDataRoutePassesTheAccessCheck() throws Exception {
        List<String> checked = new ArrayList<>();
        HttpAccess rules = (authorization, role, model) -> {
            checked.add(role + ":" + model);
            if (authorization == null) {
                return HttpAccess.Decision.UNAUTHENTICATED;
            }
            return "secret".equals(model) ? HttpAccess.Decision.FORBIDDEN : HttpAccess.Decision.ALLOW;
        };
        try (HttpApi guarded = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null,
                server.server().registry(), server.server().persistence(), rules)) {
            String base = "http://127.0.0.1:" + guarded.port();
            HttpResponse<String> anonymous = http.send(HttpRequest.newBuilder(URI.create(base + "/metrics")).build(),
                    HttpResponse.BodyHandlers.ofString());
            assertEquals(401, anonymous.statusCode());
            assertEquals("Bearer", anonymous.headers().firstValue("WWW-Authenticate").orElse(""));
            HttpResponse<String> forbidden = http.send(HttpRequest.newBuilder(URI.create(base + "/api/models/secret"))
                    .header("Authorization", "Bearer t").build(), HttpResponse.BodyHandlers.ofString());
            assertEquals(403, forbidden.statusCode());
            HttpResponse<String> allowed = http.send(HttpRequest.newBuilder(URI.create(base + "/metrics"))
                    .header("Authorization", "Bearer t").build(), HttpResponse.BodyHandlers.ofString());
            assertEquals(200, allowed.statusCode());
            assertTrue(allowed.body().contains("optsidecar_memory_limit_bytes"));
            assertEquals(List.of("reader:null", "reader:secret", "reader:null"), checked);
        }
    }

    @Test
    void theApisTokensGuardTheHttpPort(@TempDir Path dir) throws Exception {
        client.register(TestData.spec("team-a/run", "SGD", TestData.hp("lr", 0.1), 4).build(),
                TestData.data(TestData.random(4, 1)));
        client.register(TestData.spec("team-b/run", "SGD", TestData.hp("lr", 0.1), 4).build(),
                TestData.data(TestData.random(4, 2)));
        Path file = dev.optsidecar.server.auth.TokenFiles.of()
                .token("ops", "ops-token", "reader", "*")
                .token("a-reader", "a-token", "reader", "team-a/*")
                .writeTo(dir.resolve("tokens.json"));
        try (dev.optsidecar.server.auth.TokenAuthority tokens = dev.optsidecar.server.auth.TokenAuthority.load(file,
                java.time.Duration.ofSeconds(5));
             HttpApi guarded = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null,
                     server.server().registry(), server.server().persistence(), new TokenAccess(tokens))) {
            String base = "http://127.0.0.1:" + guarded.port();
            java.util.function.BiFunction<String, String, Integer> status = (path, token) -> {
                HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(base + path));
                if (token != null) {
                    request.header("Authorization", "Bearer " + token);
                }
                try {
                    return http.send(request.build(), HttpResponse.BodyHandlers.ofString()).statusCode();
                } catch (Exception e) {
                    throw new AssertionError(e);
                }
            };
            assertEquals(401, status.apply("/metrics", null));
            assertEquals(401, status.apply("/metrics", "not-a-token"));
            assertEquals(200, status.apply("/metrics", "ops-token"));
            assertEquals(403, status.apply("/metrics", "a-token")); // its series name every model
            assertEquals(200, status.apply("/api/models/team-a%2Frun", "a-token"));
            assertEquals(403, status.apply("/api/models/team-b%2Frun/figures", "a-token"));
            assertEquals(401, status.apply("/api/models", null));
            HttpResponse<String> listed = http.send(HttpRequest.newBuilder(URI.create(base + "/api/models"))
                    .header("Authorization", "Bearer a-token").build(), HttpResponse.BodyHandlers.ofString());
            List<String> names = new ArrayList<>();
            json.readTree(listed.body()).get("models").forEach(m -> names.add(m.get("name").asText()));
            assertEquals(List.of("team-a/run"), names);
        }
    }

    private HttpResponse<String> get(String path) throws Exception {
        return http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + api.port() + path)).build(),
                HttpResponse.BodyHandlers.ofString());
    }

    /** The scrape's samples, keyed by name and labels as exposed: {@code name{a="x",b="y"}}. */
    private Map<String, Double> scrape() throws Exception {
        HttpResponse<String> response = get("/metrics");
        assertEquals(200, response.statusCode());
        Map<String, Double> samples = new LinkedHashMap<>();
        for (String line : response.body().split("\n")) {
            if (line.isBlank() || line.startsWith("#")) {
                continue;
            }
            int space = line.lastIndexOf(' ');
            samples.put(line.substring(0, space), Double.parseDouble(line.substring(space + 1)));
        }
        return samples;
    }

    /** The one sample of {@code name} whose labels include {@code labels} (name, value, ...). */
    private static double value(Map<String, Double> samples, String name, String... labels) {
        Double v = find(samples, name, labels);
        assertNotNull(v, name + " " + String.join(",", labels) + " in " + samples.keySet());
        return v;
    }

    private static double valueOr(Map<String, Double> samples, double otherwise, String name, String... labels) {
        Double v = find(samples, name, labels);
        return v == null ? otherwise : v;
    }

    private static Double find(Map<String, Double> samples, String name, String... labels) {
        Double found = null;
        for (Map.Entry<String, Double> e : samples.entrySet()) {
            String key = e.getKey();
            if (!(key.equals(name) || key.startsWith(name + "{"))) {
                continue;
            }
            boolean all = true;
            for (int i = 0; i < labels.length; i += 2) {
                all &= key.contains(labels[i] + "=\"" + labels[i + 1] + "\"");
            }
            if (all) {
                assertTrue(found == null, "one sample of " + name + " with " + String.join(",", labels));
                found = e.getValue();
            }
        }
        return found;
    }

    private static double norm(float[][] arrays) {
        double s = 0;
        for (float[] a : arrays) {
            for (float v : a) {
                s += (double) v * v;
            }
        }
        return Math.sqrt(s);
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
