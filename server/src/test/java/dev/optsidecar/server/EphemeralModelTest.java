package dev.optsidecar.server;

import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.durability.StepJournal;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;

import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Ephemeral models (ModelSpec.lease_seconds): deleted and freed once their lease goes unrenewed
 * for the grace period, kept alive by RenewLease; models without a lease are never deleted.
 */
class EphemeralModelTest {
    private static ModelSpec spec(String name) {
        return TestData.spec(name, "AdamW", TestData.hp("lr", 0.01), 1000).build();
    }

    @Test
    void unrenewedModelIsDeletedAfterItsGraceAndItsMemoryReturns() throws Exception {
        Logger serverLog = Logger.getLogger("dev.optsidecar.server");
        List<String> lines = new CopyOnWriteArrayList<>();
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getLevel() == Level.INFO) {
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
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            long before = f.server().registry().reservedBytes();
            long registering = System.nanoTime(); // the lease starts before the registration is answered
            f.client().registerEphemeral(spec("scratch"), TestData.data(TestData.random(1000, 1)), 1);
            assertTrue(f.server().registry().reservedBytes() > before);
            SidecarFixture.awaitTrue("the lease to expire", () -> !f.client().list().contains("scratch"));
            assertTrue(System.nanoTime() - registering >= 1_000_000_000L, "deleted before its grace period");
            assertEquals(before, f.server().registry().reservedBytes());
            assertStatus(Status.Code.NOT_FOUND, () -> f.client().describe("scratch"), "scratch", "lease expired");
            assertStatus(Status.Code.NOT_FOUND, () -> f.client().renewLease("scratch"), "lease expired");
            assertTrue(lines.stream().anyMatch(l -> l.matches(
                    "model 'scratch': lease of 1 s expired without renewal; deleted at version 0 \\(\\d+ bytes freed\\)")),
                    lines.toString());

            // The name is free again, and the new model is not reported as expired.
            f.client().register(spec("scratch"), TestData.data(TestData.random(1000, 2)));
            assertEquals("scratch", f.client().describe("scratch").getName());
        } finally {
            serverLog.removeHandler(capture);
        }
    }

    @Test
    void renewalsKeepItAliveUntilTheyStop() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().registerEphemeral(spec("renewed"), TestData.data(TestData.random(1000, 1)), 1);
            long until = System.nanoTime() + 3_000_000_000L;
            while (System.nanoTime() < until) {
                assertEquals(1, f.client().renewLease("renewed"));
                Thread.sleep(250);
            }
            assertTrue(f.client().list().contains("renewed"), "renewed model was deleted");
            try (Trainer trainer = f.client().trainer("renewed", "t")) {
                trainer.step(new float[][] {TestData.random(1000, 3)}, new float[][] {new float[1000]});
                SidecarFixture.awaitTrue("the lease to expire once renewals stop",
                        () -> !f.client().list().contains("renewed"));
                // An open stream does not renew the lease; its next step is told why the model is gone.
                assertStatus(Status.Code.NOT_FOUND,
                        () -> trainer.step(new float[][] {TestData.random(1000, 4)}, new float[][] {new float[1000]}),
                        "lease expired");
            }
        }
    }

    @Test
    void modelWithoutLeaseIsNeverDeleted() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().register(spec("named"), TestData.data(TestData.random(1000, 1)));
            f.client().registerEphemeral(spec("witness"), TestData.data(TestData.random(1000, 2)), 1);
            assertEquals(0, f.client().renewLease("named"));
            SidecarFixture.awaitTrue("the witness's lease to expire", () -> !f.client().list().contains("witness"));
            Thread.sleep(1500);
            assertEquals(List.of("named"), f.client().list());
        }
    }

    @Test
    void forkOfAnEphemeralModelIsKept() throws Exception {
        try (SidecarFixture f = SidecarFixture.inProcess().start()) {
            f.client().registerEphemeral(spec("source"), TestData.data(TestData.random(1000, 1)), 1);
            f.client().fork("source", "branch", null);
            SidecarFixture.awaitTrue("the source's lease to expire", () -> !f.client().list().contains("source"));
            assertEquals(List.of("branch"), f.client().list());
            assertEquals(0, f.client().renewLease("branch"));
        }
    }

    @Test
    void restoredEphemeralModelStartsANewLeaseAndOnceExpiredIsNotRestoredAgain(@TempDir Path dir) throws Exception {
        Persistence.Options durable = new Persistence.Options(dir, 3, StepJournal.Sync.WRITE, 0, null, true);
        try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of()).start()) {
            // Long enough not to expire before the restart: the snapshot taken at registration keeps it.
            f.client().registerEphemeral(spec("durable-scratch"), TestData.data(TestData.random(1000, 1)), 2);
            f.client().register(spec("durable-named"), TestData.data(TestData.random(1000, 2)));
        }
        try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of("latest")).start()) {
            assertEquals(List.of("durable-named", "durable-scratch"), f.client().list());
            assertEquals(2, f.client().renewLease("durable-scratch"));
            SidecarFixture.awaitTrue("the restored model's lease to expire",
                    () -> !f.client().list().contains("durable-scratch"));
        }
        try (SidecarFixture f = SidecarFixture.inProcess(durable, List.of("latest")).start()) {
            assertEquals(List.of("durable-named"), f.client().list());
        }
    }
}
