package dev.optsidecar.server.durability;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.SocketServer;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static dev.optsidecar.server.durability.SnapshotResumeTest.blanks;
import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.grads;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * A Restore that replaces a model makes the restored model visible before its first snapshot is
 * committed. A step acknowledged in between would be journaled under the restored run, which no
 * committed snapshot starts yet: a crash then restarts the replaced timeline and the acknowledged
 * step is gone. So the restored model refuses steps (UNAVAILABLE, which clients retry) until it is
 * durable.
 */
class RestoreReplaceDurabilityTest {
    @TempDir
    Path tmp;

    @Test
    void aReplacingRestoreAcknowledgesNoStepBeforeItsSnapshotIsCommitted() throws Exception {
        Path live = tmp.resolve("live");
        Path crashImage = tmp.resolve("crash-image");
        CompletableFuture<Object> stepInTheWindow = new CompletableFuture<>();
        try (SocketServer s = DurableRun.start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port());
             OptSidecarClient other = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(DurableRun.spec("m"), data(initial()));
            DurableRun.steps(client, "m", 1, 3);
            SnapshotInfo early = client.snapshot("m");
            DurableRun.steps(client, "m", 4, 6);

            // The moment the restored model is published (the restore logs it), before its snapshot:
            // a trainer steps on it, and the state directory is copied as a crash would leave it.
            Handler atPublish = new Handler() {
                @Override
                public void publish(LogRecord r) {
                    if (r.getMessage() == null || !r.getMessage().contains("restored from snapshot")) {
                        return;
                    }
                    CompletableFuture.runAsync(() -> {
                        try (Trainer t = other.trainer("m", "t").retryFor(Duration.ZERO)) {
                            stepInTheWindow.complete(t.step(data(grads(7)), data(blanks())));
                        } catch (RuntimeException e) {
                            stepInTheWindow.complete(Status.fromThrowable(e));
                        }
                    });
                    try {
                        stepInTheWindow.get(10, TimeUnit.SECONDS);
                        SnapshotResumeTest.copyTree(live, crashImage);
                    } catch (Exception e) {
                        stepInTheWindow.complete(e);
                    }
                }

                @Override
                public void flush() {}

                @Override
                public void close() {}
            };
            Logger log = Logger.getLogger(Persistence.class.getName());
            log.addHandler(atPublish);
            try {
                client.restore(RestoreRequest.newBuilder().setModel("m").setId(early.getId()).setReplace(true).build());
            } finally {
                log.removeHandler(atPublish);
            }
            Object outcome = stepInTheWindow.get(0, TimeUnit.SECONDS);
            if (outcome instanceof StepResult acknowledged) {
                throw new AssertionError("a step was acknowledged at version " + acknowledged.getVersion()
                        + " of the restored model before its snapshot was committed");
            }
            assertEquals(Status.Code.UNAVAILABLE, ((Status) outcome).getCode(), String.valueOf(outcome));
            assertEquals(3, client.describe("m").getVersion());
            // Once the Restore is acknowledged, the same step goes through.
            try (Trainer t = other.trainer("m", "t")) {
                assertEquals(4, t.step(data(grads(7)), data(blanks())).getVersion());
            }
        }
        // Killed at that moment, the server comes back with the run the Restore was replacing.
        try (SocketServer s = DurableRun.start(crashImage, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            assertEquals(6, client.describe("m").getVersion());
        }
    }
}
