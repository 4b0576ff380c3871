package dev.optsidecar.server;

import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Register, delete, restore and shutdown each leave one INFO line naming the model and its version or size. */
class OperationsLogTest {
    @Test
    void registerDeleteRestoreAndShutdownAreLogged(@TempDir Path dir) throws Exception {
        Logger serverLog = Logger.getLogger("dev.optsidecar.server");
        List<String> lines = new CopyOnWriteArrayList<>();
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getLevel() == Level.INFO && !r.getMessage().contains(": snapshot ")) {
                    lines.add(r.getMessage());
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
                f.client().register(TestData.spec("logged", "RAdam", TestData.hp("lr", 0.1), 100).build(),
                        TestData.data(TestData.random(100, 1)));
                f.client().restore(RestoreRequest.newBuilder().setModel("logged").setAsModel("copy").build());
                f.client().delete("logged");
            }
            assertEquals(4, lines.size(), lines.toString());
            assertMatches("model 'logged': registered \\(RAdam, 1 tensors, \\d+ bytes\\) at version 0", lines.get(0));
            assertMatches("model 'copy': restored from snapshot \\d+ of 'logged' \\(version 0\\).*", lines.get(1));
            assertMatches("model 'logged': deleted at version 0 \\(\\d+ bytes freed\\)", lines.get(2));
            assertMatches("shutting down: 1 models loaded, snapshotting those that changed", lines.get(3));
        } finally {
            serverLog.removeHandler(capture);
        }
    }

    private static void assertMatches(String regex, String line) {
        org.junit.jupiter.api.Assertions.assertTrue(line.matches(regex), line);
    }
}
