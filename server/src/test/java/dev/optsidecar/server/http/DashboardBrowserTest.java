package dev.optsidecar.server.http;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.server.ListenAddress;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import dev.optsidecar.server.model.Limits;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.net.InetSocketAddress;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The dashboard in a real headless Chromium against a server on real sockets: two models of a
 * sweep trained by the Java client, the page opened on both overlaid, then on one. The page must
 * list the models, plot every version and figure the run made (the plots expose their point
 * counts as data attributes), follow the run live, and report no console error. Without Chromium
 * the test is skipped, unless OPTSIDECAR_REQUIRE_BROWSER=1 (as in CI) makes that a failure.
 */
class DashboardBrowserTest {
    private static final Duration WAIT = Duration.ofSeconds(20);
    private static final String ADAM = "sweep/adam/lr=0.01/seed=1";
    private static final String RADAM = "sweep/radam/lr=0.01/seed=1";
    private static final int STEPS = 12;
    /** Every EVAL_EVERY-th step also reports eval_loss. */
    private static final int EVAL_EVERY = 4;
    private static final int MORE_STEPS = 8;
    private static final int A = 50;
    private static final int B = 5;

    private Path chromium;
    private SocketServer server;
    private HttpApi api;
    private OptSidecarClient client;
    private HeadlessBrowser browser;
    private final Map<String, float[][]> weights = new HashMap<>();

    @BeforeEach
    void start(@TempDir Path dir) throws Exception {
        Optional<Path> found = HeadlessBrowser.find();
        if (found.isEmpty()) {
            if ("1".equals(System.getenv("OPTSIDECAR_REQUIRE_BROWSER"))) {
                fail("OPTSIDECAR_REQUIRE_BROWSER=1 but no chromium: " + HeadlessBrowser.whereLooked());
            }
            assumeTrue(false, "no chromium (" + HeadlessBrowser.whereLooked() + "): the browser test is skipped");
        }
        chromium = found.get();
        Persistence.Options durable = new Persistence.Options(dir.resolve("state"), 3, StepJournal.Sync.WRITE, 0,
                null, true);
        server = SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)), 2, 256L << 20, durable,
                List.of(), Limits.DEFAULTS);
        api = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null, server.server().registry(),
                server.server().persistence(), HttpAccess.ALLOW_ALL);
        client = OptSidecarClient.connect("127.0.0.1:" + server.port());
        Path profile = Files.createDirectories(dir.resolve("browser/profile"));
        browser = HeadlessBrowser.start(chromium, profile);
    }

    @AfterEach
    void stop() throws Exception {
        if (browser != null) {
            browser.close();
        }
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
    void pageListsTheModelsAndPlotsTheirRunLive() throws Exception {
        for (String[] model : List.of(new String[] {ADAM, "Adam"}, new String[] {RADAM, "RAdam"})) {
            client.register(TestData.spec(model[0], model[1], TestData.hp("lr", 0.01), A, B).build(),
                    TestData.data(TestData.random(A, 1), TestData.random(B, 2)));
            weights.put(model[0], new float[][] {new float[A], new float[B]});
            train(model[0], 0, STEPS);
        }
        client.snapshot(ADAM);
        int snapshots = client.listSnapshots(ADAM).size();
        int evals = (STEPS + EVAL_EVERY - 1) / EVAL_EVERY;

        // Both models overlaid, as a link to a sweep's page names them.
        browser.navigate(base() + "/#models=" + encode(ADAM) + "," + encode(RADAM));
        JsonNode listed = browser.await("[...document.querySelectorAll('#models tbody tr')].map(r => r.dataset.model)",
                v -> v.size() == 2, WAIT);
        assertEquals(List.of(ADAM, RADAM), List.of(listed.get(0).asText(), listed.get(1).asText()));
        // The loss plot: each model's train and eval series; the step figures: one series a model.
        awaitPlot("fig:loss", 4, 2 * (STEPS + evals));
        awaitPlot("lr", 2, 2 * STEPS);
        awaitPlot("grad_norm", 2, 2 * STEPS);
        awaitPlot("step_time", 2, 2 * STEPS);

        // The page follows the run: steps made while it is open are plotted within a few polls.
        train(RADAM, STEPS, MORE_STEPS);
        awaitPlot("fig:loss", 4, 2 * (STEPS + evals) + MORE_STEPS);
        awaitPlot("lr", 2, 2 * STEPS + MORE_STEPS);

        // Hovering a plot reads out the values under the pointer.
        JsonNode readout = browser.await("""
                (() => {
                  const canvas = document.querySelector('[data-metric="lr"] canvas');
                  const box = canvas.getBoundingClientRect();
                  canvas.dispatchEvent(new MouseEvent('mousemove',
                      {clientX: box.left + box.width / 2, clientY: box.top + box.height / 2}));
                  const out = document.querySelector('[data-metric="lr"] .plot-readout');
                  return out.hidden ? '' : out.textContent;
                })()""", v -> !v.asText().isEmpty(), WAIT);
        assertTrue(readout.asText().contains("0.01"), "the readout shows the lr: " + readout);

        // One model picked from the list: its own plots, trainers and snapshots.
        browser.evaluate("document.querySelector('#models tr[data-model=\"" + ADAM + "\"] td.name').click()");
        awaitPlot("fig:loss", 2, STEPS + evals);
        awaitPlot("lr", 1, STEPS);
        JsonNode trainers = browser.await("[...document.querySelectorAll('#trainers tbody tr')]"
                + ".map(r => [...r.cells].map(c => c.textContent))", v -> v.size() == 1, WAIT);
        assertEquals(List.of(ADAM, trainerOf(ADAM), "left", String.valueOf(STEPS), String.valueOf(STEPS)),
                texts(trainers.get(0)));
        JsonNode snapshotRows = browser.await("document.querySelectorAll('#snapshots tbody tr').length",
                v -> v.asInt() == snapshots, WAIT);
        assertTrue(snapshots > 0);
        assertEquals(snapshots, snapshotRows.asInt());
        assertTrue(browser.evaluate("document.getElementById('status').textContent").asText().startsWith("live"));
        assertEquals(List.of(), browser.errors(), "the page reported errors");
    }

    @Test
    void longRunKeepsItsWholeSpanInBoundedPoints() throws Exception {
        int keep = 40;
        int steps = 3 * keep + 5;
        client.register(TestData.spec(RADAM, "RAdam", TestData.hp("lr", 0.01), A, B).build(),
                TestData.data(TestData.random(A, 1), TestData.random(B, 2)));
        weights.put(RADAM, new float[][] {new float[A], new float[B]});
        train(RADAM, 0, steps);

        browser.navigate(base() + "/#models=" + encode(RADAM) + "&points=" + keep);
        String plotted = "(() => { const p = document.querySelector('[data-metric=\"lr\"]');"
                + " return p ? [Number(p.dataset.points), p.dataset.steps] : [0, '']; })()";
        // Halved by dropping every other point whenever it passes the bound: between half and all of it.
        JsonNode lr = browser.await(plotted, v -> v.get(1).asText().equals("1-" + steps), WAIT);
        assertEquals("1-" + steps, lr.get(1).asText(), "the lr plot spans the whole run");
        assertTrue(lr.get(0).asInt() > keep / 2 && lr.get(0).asInt() <= keep, "points kept: " + lr);

        train(RADAM, steps, MORE_STEPS);
        JsonNode more = browser.await(plotted, v -> v.get(1).asText().equals("1-" + (steps + MORE_STEPS)), WAIT);
        assertEquals("1-" + (steps + MORE_STEPS), more.get(1).asText());
        assertTrue(more.get(0).asInt() > keep / 2 && more.get(0).asInt() <= keep, "points kept: " + more);
        assertEquals(List.of(), browser.errors(), "the page reported errors");
    }

    @Test
    void tokenFromTheAddressGoesWithEveryRequest() throws Exception {
        client.register(TestData.spec(ADAM, "Adam", TestData.hp("lr", 0.01), A, B).build(),
                TestData.data(TestData.random(A, 1), TestData.random(B, 2)));
        weights.put(ADAM, new float[][] {new float[A], new float[B]});
        train(ADAM, 0, STEPS);
        java.util.Set<String> seen = java.util.concurrent.ConcurrentHashMap.newKeySet();
        HttpAccess tokenOnly = (authorization, role, model) -> {
            seen.add(String.valueOf(authorization));
            return "Bearer s3cret".equals(authorization) ? HttpAccess.Decision.ALLOW
                    : authorization == null ? HttpAccess.Decision.UNAUTHENTICATED : HttpAccess.Decision.FORBIDDEN;
        };
        try (HttpApi guarded = HttpApi.start(new InetSocketAddress("127.0.0.1", 0), null,
                server.server().registry(), server.server().persistence(), tokenOnly)) {
            browser.navigate("http://127.0.0.1:" + guarded.port() + "/#token=s3cret&models=" + encode(ADAM));
            JsonNode listed = browser.await("[...document.querySelectorAll('#models tbody tr')].map(r => r.dataset.model)",
                    v -> v.size() == 1, WAIT);
            assertEquals(ADAM, listed.get(0).asText());
            awaitPlot("lr", 1, STEPS);
            assertEquals(java.util.Set.of("Bearer s3cret"), seen, "every request carried the token");
            String address = browser.evaluate("location.href").asText();
            assertTrue(!address.contains("s3cret") && address.contains("models="),
                    "the token leaves the address, the selection stays: " + address);
        }
        assertEquals(List.of(), browser.errors(), "the page reported errors");
    }

    /** Waits until the plot of {@code metric} shows {@code series} lines of {@code points} points in all. */
    private void awaitPlot(String metric, int series, int points) throws InterruptedException {
        String expression = "(() => { const p = document.querySelector('[data-metric=\"" + metric + "\"]');"
                + " return p ? [Number(p.dataset.series), Number(p.dataset.points)] : [0, 0]; })()";
        JsonNode shown = browser.await(expression,
                v -> v.get(0).asInt() == series && v.get(1).asInt() == points, WAIT);
        assertEquals(List.of(series, points), List.of(shown.get(0).asInt(), shown.get(1).asInt()),
                "plot " + metric + ": [series, points]; page errors: " + browser.errors());
    }

    /** Steps {@code model} with random gradients, reporting loss each step and eval_loss every few. */
    private void train(String model, int from, int steps) {
        try (Trainer trainer = client.trainer(model, trainerOf(model))) {
            for (int t = from; t < from + steps; t++) {
                Map<String, Double> figures = new HashMap<>(Map.of("loss", 1.0 / (t + 1)));
                if (t % EVAL_EVERY == 0 && t < STEPS) {
                    figures.put("eval_loss", 2.0 / (t + 1));
                }
                trainer.log(figures).step(new float[][] {TestData.random(A, 100 + t), TestData.random(B, 200 + t)},
                        weights.get(model));
            }
        }
    }

    /** The trainer's client id: the model's optimizer, e.g. trainer-radam. */
    private static String trainerOf(String model) {
        return "trainer-" + model.split("/")[1];
    }

    private static List<String> texts(JsonNode array) {
        List<String> out = new java.util.ArrayList<>();
        array.forEach(n -> out.add(n.asText()));
        return out;
    }

    private String base() {
        return "http://127.0.0.1:" + api.port();
    }

    private static String encode(String name) {
        return URLEncoder.encode(name, StandardCharsets.UTF_8);
    }
}
