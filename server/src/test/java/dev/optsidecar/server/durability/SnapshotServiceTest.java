package dev.optsidecar.server.durability;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.TrainingConfigs;
import dev.optsidecar.server.SocketServer;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.snapshot.SafetensorsFile;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.List;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static dev.optsidecar.server.durability.DurableRun.spec;
import static dev.optsidecar.server.durability.DurableRun.start;
import static dev.optsidecar.server.durability.DurableRun.steps;
import static dev.optsidecar.server.durability.SnapshotResumeTest.blanks;
import static dev.optsidecar.server.durability.SnapshotResumeTest.data;
import static dev.optsidecar.server.durability.SnapshotResumeTest.grads;
import static dev.optsidecar.server.durability.SnapshotResumeTest.initial;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The snapshot RPCs over a real socket: corruption and fallback, restore, fork, export, listing. */
class SnapshotServiceTest {
    @TempDir
    Path tmp;

    @Test
    void aCorruptSnapshotIsNeverLoadedAndTheOneBeforeItPlusTheJournalsRestoreExactly() throws Exception {
        Path live = tmp.resolve("live");
        Path image = tmp.resolve("image");
        DurableRun.SnapshotsAndJournals run = DurableRun.SnapshotsAndJournals.train(live, image);
        SnapshotInfo second = run.second();
        SnapshotInfo third = run.third();
        SnapshotResumeTest.State expected = run.expected();
        assertEquals(List.of(3L, 5L), List.of(second.getVersion(), third.getVersion()));
        flipByte(image.resolve(third.getPath()).resolve("weights.safetensors"), 5000);

        List<String> warnings = new java.util.concurrent.CopyOnWriteArrayList<>();
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                warnings.add(r.getMessage());
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        Logger.getLogger("dev.optsidecar.server").addHandler(capture);
        try (SocketServer s = start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            expected.assertSame(SnapshotResumeTest.State.of(client, "m"), "snapshot 2 + journals 2 and 3");
            assertTrue(warnings.stream().anyMatch(w -> w.contains(third.getId()) && w.contains("corrupt")
                    && w.contains("weights.safetensors") && w.contains("falling back to " + second.getId())), warnings.toString());

            SnapshotInfo listed = client.listSnapshots("m").stream().filter(i -> i.getId().equals(third.getId()))
                    .findFirst().orElseThrow();
            assertFalse(listed.getValid());
            assertTrue(listed.getProblem().contains("weights.safetensors"), listed.getProblem());

            StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> client.restore(
                    RestoreRequest.newBuilder().setModel("m").setId(third.getId()).setAsModel("copy").build()));
            assertEquals(Status.Code.DATA_LOSS, e.getStatus().getCode());
            assertTrue(e.getStatus().getDescription().contains("weights.safetensors"), e.getStatus().getDescription());
            assertFalse(client.list().contains("copy"));
        } finally {
            Logger.getLogger("dev.optsidecar.server").removeHandler(capture);
        }
    }

    @Test
    void restoreByRpcGivesExactlyThatSnapshotUnderAnotherNameOrInPlace() throws Exception {
        try (SocketServer s = start(tmp, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec("m"), data(initial()));
            steps(client, "m", 1, 4);
            SnapshotInfo at4 = client.snapshot("m");
            SnapshotResumeTest.State state4 = SnapshotResumeTest.State.of(client, "m");
            steps(client, "m", 5, 6);

            client.restore(RestoreRequest.newBuilder().setModel("m").setId(at4.getId()).setAsModel("m-at-4").build());
            state4.assertSame(SnapshotResumeTest.State.of(client, "m-at-4"), "restored as m-at-4");
            StatusRuntimeException exists = assertThrows(StatusRuntimeException.class, () -> client.restore(
                    RestoreRequest.newBuilder().setModel("m").setId(at4.getId()).build()));
            assertEquals(Status.Code.ALREADY_EXISTS, exists.getStatus().getCode());
            client.restore(RestoreRequest.newBuilder().setModel("m").setId(at4.getId()).setReplace(true).build());
            state4.assertSame(SnapshotResumeTest.State.of(client, "m"), "m rolled back to version 4");

            StatusRuntimeException missing = assertThrows(StatusRuntimeException.class, () -> client.restore(
                    RestoreRequest.newBuilder().setModel("m").setId("999999").build()));
            assertEquals(Status.Code.NOT_FOUND, missing.getStatus().getCode());
            // An id that is no snapshot id never becomes a path: a NUL in it made an InvalidPathException.
            for (String bad : List.of("000001\0", "../000001", "x".repeat(10_000))) {
                StatusRuntimeException invalid = assertThrows(StatusRuntimeException.class, () -> client.restore(
                        RestoreRequest.newBuilder().setModel("m").setId(bad).build()));
                assertEquals(Status.Code.INVALID_ARGUMENT, invalid.getStatus().getCode(), invalid::toString);
                assertTrue(invalid.getStatus().getDescription().startsWith("id: "), invalid::toString);
                assertTrue(invalid.getStatus().getDescription().length() < 400, "the id is echoed cut short");
            }
        }
    }

    @Test
    void aForkContinuesLikeItsSourceAndTakesItsOwnSchedule() throws Exception {
        try (SocketServer s = start(tmp, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            ModelSpec main = TestData.spec("main", "RAdam", TestData.hp("lr", 0.01), TrainingConfigs.SIZES).build();
            client.register(main, data(initial()));
            steps(client, "main", 1, 5);
            client.fork("main", "twin", null);
            // A WSD cooldown branch: 2 warmup + 3 stable steps are behind it, the decay starts now.
            client.fork("main", "cooldown", Schedule.newBuilder().setType("wsd").setParameters(TestData.struct(
                    "warmup_steps", 2, "stable_steps", 3, "decay_steps", 4, "decay_type", "linear")).build());
            assertEquals(5, client.describe("cooldown").getVersion());
            List<float[]> a = blanks();
            List<float[]> b = blanks();
            List<float[]> c = blanks();
            try (Trainer tm = client.trainer("main", "t"); Trainer tt = client.trainer("twin", "t");
                 Trainer tc = client.trainer("cooldown", "t")) {
                for (int step = 6; step <= 9; step++) {
                    tm.step(data(grads(step)), data(a));
                    tt.step(data(grads(step)), data(b));
                    StepResult r = tc.step(data(grads(step)), data(c));
                    for (int t = 0; t < a.size(); t++) {
                        assertArrayEquals(a.get(t), b.get(t), "fork vs source, step " + step);
                    }
                    GroupStep g = r.getGroupsList().stream().filter(x -> x.getGroup().equals("default")).findFirst().orElseThrow();
                    assertEquals(0.01 * (1 - (step - 6) / 4.0), g.getLr(), 1e-15, "cooldown lr at step " + step); // linear decay from s = 5
                }
            }
            assertEquals(Status.Code.ALREADY_EXISTS, assertThrows(StatusRuntimeException.class,
                    () -> client.fork("main", "twin", null)).getStatus().getCode());
        }
    }

    @Test
    void exportWritesTheEvalViewAsSafetensorsAndSnapshotsCarryItToo() throws Exception {
        try (SocketServer s = start(tmp, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec("sf"), data(initial()));
            steps(client, "sf", 1, 4);
            List<float[]> eval = blanks();
            client.pull("sf", View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(), data(eval));

            ExportInfo export = client.export("sf", View.getDefaultInstance());
            assertEquals(ViewKind.VIEW_EVAL, export.getView().getKind());
            assertEquals(4, export.getVersion());
            assertSameTensors(eval, tmp.resolve(export.getPath()));

            SnapshotInfo snap = client.snapshot("sf");
            assertSameTensors(eval, tmp.resolve(snap.getPath()).resolve("eval.safetensors"));
            assertTrue(client.listSnapshots("").stream().allMatch(SnapshotInfo::getValid));
            assertEquals(List.of("register", "rpc"), client.listSnapshots("sf").stream().map(SnapshotInfo::getTrigger).toList());

            client.delete("sf"); // its snapshots stay, but "latest" no longer brings it back
            assertEquals(2, client.listSnapshots("sf").size());
        }
        try (SocketServer s = start(tmp, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            assertEquals(List.of(), client.list());
        }
    }

    @Test
    void snapshotsEveryNStepsKeepingTheLastK() throws Exception {
        try (SocketServer s = SocketServer.start("127.0.0.1", 0, 2, 1L << 30,
                new Persistence.Options(tmp, 2, StepJournal.Sync.WRITE, 3, null, false), List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec("m"), data(initial()));
            // Each snapshot is written in the background after its step; wait for it before going on.
            steps(client, "m", 1, 3);
            s.server().persistence().awaitBackgroundSnapshots();
            steps(client, "m", 4, 6);
            s.server().persistence().awaitBackgroundSnapshots();
            steps(client, "m", 7, 7);
            s.server().persistence().awaitBackgroundSnapshots();
            assertEquals(List.of("steps@3", "steps@6"), client.listSnapshots("m").stream() // register@0: beyond keep 2
                    .map(i -> i.getTrigger() + "@" + i.getVersion()).toList());
        }
    }

    @Test
    void snapshotsEveryTSecondsOnlyWhatChanged() throws Exception {
        try (SocketServer s = SocketServer.start("127.0.0.1", 0, 2, 1L << 30,
                new Persistence.Options(tmp, 3, StepJournal.Sync.WRITE, 0, java.time.Duration.ofMillis(200), false),
                List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec("m"), data(initial()));
            steps(client, "m", 1, 2);
            long deadline = System.nanoTime() + 10_000_000_000L;
            while (client.listSnapshots("m").stream().noneMatch(i -> i.getVersion() == 2) && System.nanoTime() < deadline) {
                Thread.sleep(20);
            }
            List<SnapshotInfo> saved = client.listSnapshots("m");
            SnapshotInfo last = saved.get(saved.size() - 1);
            assertEquals("interval@2", last.getTrigger() + "@" + last.getVersion());
            Thread.sleep(700); // nothing changed since: no new snapshot
            assertEquals(saved, client.listSnapshots("m"));
        }
    }

    @Test
    void syncStepsAreJournaledWithTheirContributorsAndReplayExactly() throws Exception {
        Path live = tmp.resolve("live");
        Path image = tmp.resolve("image");
        ModelSpec spec = spec("sync").toBuilder().setCoordination(TestData.sync(3, 0, 0)).build();
        SnapshotResumeTest.State expected;
        try (SocketServer s = start(live, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec, data(initial()));
            List<Trainer> trainers = List.of(client.trainer("sync", "a"), client.trainer("sync", "b"),
                    client.trainer("sync", "c"));
            for (int step = 1; step <= 4; step++) {
                int at = step;
                List<java.util.concurrent.CompletableFuture<StepResult>> results = new java.util.ArrayList<>();
                for (int i = 0; i < 3; i++) {
                    Trainer t = trainers.get(i);
                    List<float[]> g = grads(10 * at + i);
                    results.add(java.util.concurrent.CompletableFuture.supplyAsync(() -> t.step(data(g), data(blanks()))));
                }
                for (var r : results) {
                    assertEquals(step, r.get().getVersion());
                }
            }
            trainers.forEach(Trainer::close);
            SnapshotResumeTest.copyTree(live, image);
            expected = SnapshotResumeTest.State.of(client, "sync");
        }
        try (SocketServer s = start(image, List.of("latest"));
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            SnapshotResumeTest.State restored = SnapshotResumeTest.State.of(client, "sync");
            expected.assertSame(restored, "4 sync steps replayed from the journal");
            assertEquals(expected.info().getState().getClientsList(), restored.info().getState().getClientsList(),
                    "each contributor's last step comes back");
            assertEquals(List.of("a@4", "b@4", "c@4"), restored.info().getState().getClientsList().stream()
                    .map(c -> c.getClientId() + "@" + c.getLastStepId()).toList());
        }
    }

    /** A long model name is echoed cut short: whole, it made trailers too large for the client (INTERNAL). */
    @Test
    void restoreOfAnUnknownLongModelNameIsNotFound() throws Exception {
        try (SocketServer s = start(tmp, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            String name = "x".repeat(10_000);
            for (String id : List.of("", "000001")) {
                StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> client.restore(
                        RestoreRequest.newBuilder().setModel(name).setId(id).build()));
                assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode(), e::toString);
                assertTrue(e.getStatus().getDescription().length() < 400, "the name is echoed cut short");
            }
        }
    }

    @Test
    void withoutAStateDirectorySnapshotsAreAFailedPrecondition() throws Exception {
        try (SocketServer s = SocketServer.start("127.0.0.1", 0, 2, 1L << 28);
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            client.register(spec("m"), data(initial()));
            StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> client.snapshot("m"));
            assertEquals(Status.Code.FAILED_PRECONDITION, e.getStatus().getCode());
            assertTrue(e.getStatus().getDescription().contains("--state-dir"));
            assertEquals(client.describe("m").getState(), client.fork("m", "m2", null).getState()); // no state directory needed
        }
    }

    private static void assertSameTensors(List<float[]> expected, Path file) throws IOException {
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            List<String> names = List.of("t0", "t1", "t2");
            for (int t = 0; t < expected.size(); t++) {
                float[] got = new float[expected.get(t).length];
                f.readAll(names.get(t), (offset, data) -> data.order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
                        .get(got, (int) offset, data.remaining() / Float.BYTES));
                assertArrayEquals(expected.get(t), got, file.getFileName() + " tensor " + names.get(t));
            }
        }
    }

    private static void flipByte(Path file, long at) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.seek(at);
            int b = f.read();
            f.seek(at);
            f.write(b ^ 0x40);
        }
    }

}
