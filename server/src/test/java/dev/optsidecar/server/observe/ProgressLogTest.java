package dev.optsidecar.server.observe;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Restoring a snapshot reports its verification and loading as progress lines, bytes done of the total. */
class ProgressLogTest {
    private static final int NUMEL = 1_000_000;

    @Test
    void restoringReportsBytesVerifiedAndLoaded(@TempDir Path dir) throws Exception {
        List<Map<String, Object>> progress = new CopyOnWriteArrayList<>();
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getParameters() != null && r.getParameters()[0] instanceof LogEvent.Fields f
                        && "progress".equals(f.values().get("event"))) {
                    progress.add(f.values());
                }
            }

            @Override
            public void flush() {
            }

            @Override
            public void close() {
            }
        };
        Logger serverLog = Logger.getLogger("dev.optsidecar.server");
        serverLog.addHandler(capture);
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
        try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of()).start()) {
            f.client().register(TestData.spec("big", "Adam", TestData.hp("lr", 0.1), NUMEL).build(),
                    TestData.data(TestData.random(NUMEL, 1)));
            try (Trainer trainer = f.client().trainer("big", "t")) {
                trainer.step(new float[][] {TestData.random(NUMEL, 2)}, new float[][] {new float[NUMEL]});
            }
            f.client().snapshot("big");
            assertEquals(List.of(), progress, "quick operations log no progress at the default period");

            System.setProperty(Progress.INTERVAL_PROPERTY, "0");
            try {
                f.client().restore(RestoreRequest.newBuilder().setModel("big").setAsModel("copy").build());
            } finally {
                System.clearProperty(Progress.INTERVAL_PROPERTY);
            }
        } finally {
            serverLog.removeHandler(capture);
        }
        List<Map<String, Object>> verify = of(progress, "verify_snapshot");
        List<Map<String, Object>> load = of(progress, "load_snapshot");
        assertTrue(verify.size() > 1 && load.size() > 1, progress.toString());
        for (List<Map<String, Object>> lines : List.of(verify, load)) {
            long last = -1;
            for (Map<String, Object> line : lines) {
                long done = (Long) line.get("done");
                assertTrue(done > last && done <= (Long) line.get("total"), line.toString());
                assertEquals("bytes", line.get("unit"));
                last = done;
            }
            assertEquals(lines.get(lines.size() - 1).get("total"), last, "the last line is the whole");
        }
        // Loading: the weights and Adam's two moments, float32 each.
        assertEquals(3L * NUMEL * Float.BYTES, load.get(0).get("total"));
        assertEquals("copy", load.get(0).get("model"));
        assertEquals("big", verify.get(0).get("model"));
        assertTrue((Long) verify.get(0).get("total") >= 3L * NUMEL * Float.BYTES, verify.get(0).toString());
    }

    private static List<Map<String, Object>> of(List<Map<String, Object>> lines, String operation) {
        return lines.stream().filter(l -> operation.equals(l.get("operation"))).toList();
    }
}
