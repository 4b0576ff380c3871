package dev.optsidecar.server.observe;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** --log-format json: every line one JSON object, and each lifecycle event a line with its fields. */
class JsonLogTest {
    private final ObjectMapper json = new ObjectMapper();

    @Test
    void lifecycleEventsAreJsonLinesWithTheirFields(@TempDir Path dir) throws Exception {
        Logger serverLog = Logger.getLogger("dev.optsidecar.server");
        JsonLogFormatter formatter = new JsonLogFormatter();
        List<String> lines = new CopyOnWriteArrayList<>();
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getLevel().intValue() >= Level.INFO.intValue()) {
                    lines.add(formatter.format(r));
                }
            }

            @Override
            public void flush() {
            }

            @Override
            public void close() {
            }
        };
        serverLog.addHandler(capture);
        try {
            Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
            try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of()).start()) {
                f.client().register(TestData.spec("logged", "Adam", TestData.hp("lr", 0.1), 10).build(),
                        TestData.data(TestData.random(10, 1)));
                try (Trainer trainer = f.client().trainer("logged", "worker-7")) {
                    trainer.step(new float[][] {TestData.random(10, 2)}, new float[][] {new float[10]});
                }
                SidecarFixture.awaitTrue("the trainer to leave", () -> lines.stream().anyMatch(
                        l -> l.contains("\"trainer_leave\"")));
                f.client().snapshot("logged");
                f.client().restore(RestoreRequest.newBuilder().setModel("logged").setAsModel("copy").build());
                f.client().delete("logged");
            }
        } finally {
            serverLog.removeHandler(capture);
        }
        List<JsonNode> parsed = new ArrayList<>();
        for (String line : lines) {
            assertTrue(line.endsWith(System.lineSeparator()) && line.indexOf('\n') == line.length() - 1,
                    "one line: " + line);
            JsonNode node = json.readTree(line);
            for (String key : List.of("time", "level", "logger", "message")) {
                assertTrue(node.hasNonNull(key), key + " in " + line);
            }
            parsed.add(node);
        }
        JsonNode register = event(parsed, "register", "logged");
        assertEquals("INFO", register.get("level").asText());
        assertEquals("dev.optsidecar.server.api.RegisterCall", register.get("logger").asText());
        assertEquals("Adam", register.get("algorithm").asText());
        assertEquals(1, register.get("tensors").asInt());
        assertEquals(0, register.get("version").asLong());
        assertTrue(register.get("message").asText().startsWith("model 'logged': registered"));
        assertEquals("worker-7", event(parsed, "trainer_join", "logged").get("client_id").asText());
        assertEquals("worker-7", event(parsed, "trainer_leave", "logged").get("client_id").asText());
        JsonNode snapshot = parsed.stream().filter(n -> n.path("event").asText().equals("snapshot")
                && n.path("trigger").asText().equals("rpc")).findFirst().orElseThrow();
        assertEquals(1, snapshot.get("version").asLong());
        assertTrue(snapshot.get("bytes").asLong() > 0);
        JsonNode restore = event(parsed, "restore", "copy");
        assertEquals("logged", restore.get("from_model").asText());
        assertEquals(snapshot.get("snapshot").asText(), restore.get("snapshot").asText());
        assertEquals(1, event(parsed, "delete", "logged").get("version").asLong());
        assertEquals(1, event(parsed, "shutdown", null).get("models").asInt());
    }

    private static JsonNode event(List<JsonNode> lines, String event, String model) {
        return lines.stream().filter(n -> n.path("event").asText().equals(event)
                        && (model == null ? !n.has("model") : n.path("model").asText().equals(model)))
                .findFirst().orElseThrow(() -> new AssertionError(event + " of " + model + " in " + lines));
    }
}
