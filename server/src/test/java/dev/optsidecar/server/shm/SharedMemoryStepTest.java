package dev.optsidecar.server.shm;

import com.google.rpc.ErrorInfo;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.SharedSegment;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.StandardModel.SIZES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Steps whose data travels through a shared segment (StepOpen.shared) against the real server:
 * the same weights bit for bit as chunks give, and every way the client can spoil its segment
 * (a bad name, a file that does not fit, one truncated, deleted or holding a NaN) failing only
 * that client's call with the model unchanged.
 */
class SharedMemoryStepTest {
    private static Path dir;
    private static SidecarFixture f;
    private static final AtomicInteger SEQ = new AtomicInteger();

    @BeforeAll
    static void start() throws IOException {
        dir = Files.createTempDirectory("shm-test");
        f = SidecarFixture.inProcess().sharedMemory(dir).start();
    }

    @AfterAll
    static void stop() throws IOException {
        f.close();
        TestSegment.deleteDirectory(dir);
    }

    private static String register() {
        String name = "shm-" + SEQ.incrementAndGet();
        f.client().register(StandardModel.adamSpec(name), tensors(initialWeights(7)));
        return name;
    }

    private static TestSegment segment() throws IOException {
        return new TestSegment(dir, "optsidecar-test-" + SEQ.incrementAndGet(), SIZES);
    }

    /** A segment file, or a sealed segment handed over on the server's segment socket. */
    private static TestSegment segment(boolean sealed) throws IOException {
        if (!sealed) {
            return segment();
        }
        String socket = f.blocking().serverInfo(ServerInfoRequest.getDefaultInstance()).getSegmentSocket();
        return TestSegment.sealed(dir.resolve(socket), SIZES);
    }

    private static RawStep open(String model, SharedSegment shared) {
        return RawStep.start(f.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                .setModel(model).setClientId("trainer-" + SEQ.incrementAndGet()).setShared(shared)).build());
    }

    /** Opens a stream on {@code seg} and waits until the server has opened it. */
    private static RawStep openMapped(String model, TestSegment seg) {
        RawStep s = open(model, seg.message);
        SidecarFixture.awaitTrue("the segment opened", () -> f.sharedMemory().inUse(seg.message.getName()));
        return s;
    }




    @Test
    void serverInfoNamesTheDirectory() throws IOException {
        var info = f.blocking().serverInfo(ServerInfoRequest.getDefaultInstance());
        assertEquals(dir.toRealPath().toString(), info.getShmDir());
        assertEquals("cpu", info.getEngine());
        assertFalse(info.getVersion().isEmpty());
        String model = register();
        assertEquals("cpu", f.describe(model).getEngine()); // and Describe, for each model
        assertEquals("", f.describe(model).getDevice());
    }

    @ParameterizedTest(name = "sealed {0}")
    @ValueSource(booleans = {false, true})
    void stepsThroughTheSegmentMatchChunksBitForBit(boolean sealed) throws IOException {
        String viaChunks = register();
        String viaSegment = register();
        try (TestSegment seg = segment(sealed)) {
            RawStep s = open(viaSegment, seg.message);
            for (int k = 1; k <= 3; k++) {
                float[][] expected = StandardModel.zeros();
                StepResult viaChunksResult = f.step(viaChunks, grads(k), expected);
                seg.putGradients(grads(k));
                s.commit(k, ViewKind.VIEW_TRAIN);
                StepResult r = s.resultWithoutChunks(k);
                // Pieces ingested on several threads: the norm of chunks sent in order, to the bit.
                assertEquals(Double.doubleToRawLongBits(viaChunksResult.getGradNorm()),
                        Double.doubleToRawLongBits(r.getGradNorm()), "gradient norm, step " + k);
                assertTrue(r.getWeightsInSegment());
                assertEquals(k, r.getVersion());
                assertEquals(k, r.getWeightsVersion());
                assertBitsEqual(expected, seg.weights(), "weights written into the segment, step " + k);
                assertEquals(crc32cOf(seg.weights()), r.getWeightsCrc32CList(), "CRC-32C of each piece written");
            }
            s.halfClose();
            assertEquals(Status.Code.OK, s.awaitClose().getCode());
            assertBitsEqual(f.pull(viaChunks), f.pull(viaSegment), "pulled weights");
        }
        SidecarFixture.awaitTrue("the segment closed", () -> f.sharedMemory().openSegments() == 0);
    }

    @Test
    void javaTrainersErrorOverTheDoorbellIsTheStreamsAndTheNextStepGoesOn() throws IOException {
        String model = register();
        try (dev.optsidecar.client.Trainer trainer = f.client().trainer(model, "nan").useSharedMemory(dir)) {
            trainer.step(tensors(grads(1)), tensors(StandardModel.zeros()));
            assertTrue(trainer.usesDoorbell());
            float[][] g = grads(2);
            g[1][3] = Float.NaN;
            StatusRuntimeException refused = assertThrows(StatusRuntimeException.class,
                    () -> trainer.step(tensors(g), tensors(StandardModel.zeros())));
            assertEquals(Status.Code.INVALID_ARGUMENT, refused.getStatus().getCode());
            assertEquals("NON_FINITE_GRADIENT", dev.optsidecar.client.ServerError.of(refused).reason());
            assertEquals(1, f.describe(model).getVersion());
            StepResult next = trainer.step(tensors(grads(2)), tensors(StandardModel.zeros()));
            assertEquals(2, next.getVersion());
            assertTrue(trainer.usesDoorbell(), "the stream after the error has no doorbell");
        }
    }

    @Test
    void javaTrainerHandsItsSealedSegmentOverAgainWhenTheServerLostIt() throws IOException {
        String model = register();
        try (dev.optsidecar.client.Trainer trainer = f.client().trainer(model, "lost")
                .useSharedMemory(dir, dev.optsidecar.client.Trainer.SegmentKind.SEALED)) {
            trainer.step(tensors(grads(1)), tensors(StandardModel.zeros()));
            SidecarFixture.awaitTrue("held", () -> f.sharedMemory().handoff().held() == 1);
            f.sharedMemory().handoff().endConnections(); // as a restarted server holds none
            SidecarFixture.awaitTrue("let go", () -> f.sharedMemory().handoff().held() == 0);
            // A step the server refuses ends the stream: the next step opens another, naming the segment.
            var refused = new dev.optsidecar.client.Trainer.StepOptions().figure("not a figure name!", 1.0);
            StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
                    () -> trainer.step(tensors(grads(2)), tensors(StandardModel.zeros()), refused));
            assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
            float[][] weights = StandardModel.zeros();
            StepResult r = trainer.step(tensors(grads(2)), tensors(weights));
            assertEquals(2, r.getVersion());
            assertTrue(r.getWeightsInSegment());
            assertEquals(1, f.sharedMemory().handoff().held(), "handed over again, under a fresh token");
            assertBitsEqual(f.pull(model), weights, "weights through the segment handed over again");
        }
    }

    @ParameterizedTest(name = "sealed {0}")
    @ValueSource(booleans = {false, true})
    void javaTrainerThroughSharedMemoryMatchesChunks(boolean sealed) throws IOException {
        String viaChunks = register();
        String viaSegment = register();
        java.nio.file.Path created = null;
        var kind = sealed ? dev.optsidecar.client.Trainer.SegmentKind.SEALED : dev.optsidecar.client.Trainer.SegmentKind.FILE;
        try (dev.optsidecar.client.Trainer chunks = f.client().trainer(viaChunks, "chunks");
             dev.optsidecar.client.Trainer shared = f.client().trainer(viaSegment, "shared").useSharedMemory(dir, kind)) {
            assertEquals(sealed, shared.usesSealedSegment());
            try (var files = Files.list(dir)) {
                created = files.filter(p -> p.getFileName().toString().startsWith("optsidecar-")
                        && p.getFileName().toString().length() == "optsidecar-".length() + 32).findFirst().orElse(null);
            }
            if (sealed) {
                assertEquals(null, created, "a sealed segment is no file in the directory");
            } else {
                assertEquals(java.util.Set.of(java.nio.file.attribute.PosixFilePermission.OWNER_READ,
                        java.nio.file.attribute.PosixFilePermission.OWNER_WRITE), Files.getPosixFilePermissions(created));
            }
            for (int k = 1; k <= 3; k++) {
                float[][] expected = StandardModel.zeros();
                float[][] actual = StandardModel.zeros();
                float[][] g = grads(k);
                List<dev.optsidecar.client.TensorData> some = new ArrayList<>(tensors(g));
                if (k == 2) {
                    some.set(1, null); // a tensor without a gradient this step
                }
                chunks.step(some, tensors(expected));
                StepResult r = shared.step(some, tensors(actual));
                assertTrue(shared.usesDoorbell(), "the Java trainer's commits went on the stream");
                assertTrue(r.getWeightsInSegment());
                assertEquals(k, r.getWeightsVersion());
                assertBitsEqual(expected, actual, "weights of step " + k);
            }
        }
        if (created != null) {
            assertFalse(Files.exists(created), "the trainer's segment outlived it");
        }
        SidecarFixture.awaitTrue("the sealed segment let go", () -> f.sharedMemory().handoff().held() == 0);
        assertBitsEqual(f.pull(viaChunks), f.pull(viaSegment), "pulled weights");
    }

    @ParameterizedTest(name = "sealed {0}")
    @ValueSource(booleans = {false, true})
    void pullWritesTheViewIntoTheSegment(boolean sealed) throws IOException {
        String model = register();
        f.step(model, grads(1), StandardModel.zeros());
        try (TestSegment seg = segment(sealed)) {
            var chunks = f.blocking().pull(PullRequest.newBuilder().setModel(model).setShared(seg.message).build());
            WeightsChunk only = chunks.next();
            assertFalse(chunks.hasNext());
            assertTrue(only.getData().isEmpty());
            assertEquals(1, only.getVersion());
            assertEquals(ViewKind.VIEW_TRAIN, only.getView().getKind());
            assertBitsEqual(f.pull(model), seg.weights(), "pulled into the segment");
        }
    }

    @ParameterizedTest(name = "sealed {0}")
    @ValueSource(booleans = {false, true})
    void setWeightsReadsTheWeightsRegions(boolean sealed) throws IOException {
        String model = register();
        float[][] edited = initialWeights(123);
        try (TestSegment seg = segment(sealed)) {
            seg.putWeights(edited);
            RawStep s = open(model, seg.message);
            s.send(StepRequest.newBuilder().setCommit(StepCommit.newBuilder().setStepId(1)
                    .setKind(StepKind.STEP_SET_WEIGHTS).setView(View.newBuilder().setKind(ViewKind.VIEW_NONE)))
                    .build());
            assertEquals(1, s.resultWithoutChunks(1).getVersion());
            s.halfClose();
            s.awaitClose();
        }
        assertBitsEqual(edited, f.pull(model), "weights set from the segment");
    }

    /** Fails if the model's version or weights moved. */
    /** The CRC-32C of each 1 MiB piece of each tensor's little-endian float32 bytes, as the segment holds them. */
    static java.util.List<Integer> crc32cOf(float[][] weights) {
        int piece = 1 << 20;
        java.util.List<Integer> out = new java.util.ArrayList<>();
        for (float[] w : weights) {
            java.nio.ByteBuffer bytes = java.nio.ByteBuffer.allocate(w.length * Float.BYTES)
                    .order(java.nio.ByteOrder.LITTLE_ENDIAN);
            bytes.asFloatBuffer().put(w);
            for (int at = 0; at < bytes.capacity(); at += piece) {
                java.util.zip.CRC32C crc = new java.util.zip.CRC32C();
                crc.update(bytes.array(), at, Math.min(piece, bytes.capacity() - at));
                out.add((int) crc.getValue());
            }
        }
        return out;
    }

    private static void assertUnchanged(String model, long version, float[][] weights) {
        assertEquals(version, f.describe(model).getVersion());
        assertBitsEqual(weights, f.pull(model), "weights of " + model);
    }

    private static void assertReason(Status status, Status.Code code, String reason, String... fragments) {
        assertEquals(code, status.getCode(), status::toString);
        for (String fragment : fragments) {
            assertTrue(String.valueOf(status.getDescription()).contains(fragment),
                    () -> status + " does not mention " + fragment);
        }
        var error = f.errorsSent().stream().filter(e -> e.status().getDescription() != null
                && e.status().getDescription().equals(status.getDescription())).findFirst().orElseThrow();
        ErrorInfo info = dev.optsidecar.server.StatusAssertions.errorInfo(
                dev.optsidecar.server.StatusAssertions.details(error.status(), error.trailers()));
        assertEquals(reason, info.getReason());
    }

    @Test
    void truncatedBetweenStepsFailsThatStepAndChangesNothing() throws IOException {
        String model = register();
        try (TestSegment seg = segment()) {
            RawStep s = openMapped(model, seg);
            seg.putGradients(grads(1));
            s.commit(1, ViewKind.VIEW_TRAIN);
            assertEquals(1, s.resultWithoutChunks(1).getVersion());
            float[][] before = f.pull(model);
            seg.truncate(seg.size() / 2);
            s.commit(2, ViewKind.VIEW_TRAIN);
            assertReason(s.awaitClose(), Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_FAULT", "shrank");
            assertUnchanged(model, 1, before);
        }
        SidecarFixture.awaitTrue("the segment closed", () -> f.sharedMemory().openSegments() == 0);
        f.assertServerHealthy("healthy-after-truncation");
    }

    @Test
    void deletedSegmentFailsTheStep() throws IOException {
        String model = register();
        try (TestSegment seg = segment()) {
            RawStep s = openMapped(model, seg);
            Files.delete(seg.path);
            seg.putGradients(grads(1));
            s.commit(1, ViewKind.VIEW_TRAIN);
            assertReason(s.awaitClose(), Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_FAULT", "deleted");
            assertUnchanged(model, 0, initialWeights(7));
        }
    }

    @ParameterizedTest(name = "sealed {0}")
    @ValueSource(booleans = {false, true})
    void nonFiniteGradientInTheSegmentIsRejectedLikeAChunk(boolean sealed) throws IOException {
        String model = register();
        try (TestSegment seg = segment(sealed)) {
            float[][] g = grads(1);
            g[0][1234] = Float.NaN;
            seg.putGradients(g);
            RawStep s = open(model, seg.message);
            s.commit(1, ViewKind.VIEW_TRAIN);
            assertReason(s.awaitClose(), Status.Code.INVALID_ARGUMENT, "NON_FINITE_GRADIENT", "'w'", "1234");
            assertUnchanged(model, 0, initialWeights(7));
        }
    }

    /**
     * A thread truncates the segment of a large tensor while the server reads it: the file ends
     * under the reads, which must become that client's error, never the server's.
     */
    @Test
    void truncatedDuringACommitFailsOnlyThatClient() throws Exception {
        int big = 8 << 20;
        String model = "shm-big-" + SEQ.incrementAndGet();
        var spec = dev.optsidecar.proto.v1.ModelSpec.newBuilder().setName(model)
                .addTensors(StandardModel.tensor("w", big))
                .setOptimizer(dev.optsidecar.proto.v1.OptimizerConfig.newBuilder().setAlgorithm("SGD")
                        .setHyperparameters(dev.optsidecar.server.TestData.struct("lr", 0.1)))
                .build();
        float[] init = StandardModel.values(5, big);
        f.client().register(spec, List.of(dev.optsidecar.client.TensorData.of(init)));
        int faults = 0;
        int applied = 0;
        for (int trial = 0; trial < 6; trial++) {
            String name = "optsidecar-big-" + SEQ.incrementAndGet();
            try (TestSegment seg = new TestSegment(dir, name, new int[] {big})) {
                seg.putGradients(new float[][] {StandardModel.values(6, big)});
                long version = f.describe(model).getVersion();
                RawStep s = openMapped(model, seg);
                // The open is checked against the file's size: truncate only once it has been.
                SidecarFixture.awaitTrue("the segment opened", () -> f.sharedMemory().inUse(name));
                s.commit(1, ViewKind.VIEW_NONE);
                Thread.sleep(trial * 2L);
                seg.truncate(4096);
                Status end;
                SidecarFixture.awaitTrue("the step's end", () -> s.isClosed() || !s.resultsWithoutChunks().isEmpty());
                if (!s.resultsWithoutChunks().isEmpty()) {
                    applied++;
                    assertEquals(version + 1, f.describe(model).getVersion());
                    s.cancel();
                    continue;
                }
                end = s.awaitClose();
                assertReason(end, Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_FAULT");
                faults++;
                assertEquals(version, f.describe(model).getVersion(), "a failed step changed the version");
            }
        }
        assertTrue(faults > 0, "no truncation hit a commit (" + applied + " applied)");
        f.assertServerHealthy("healthy-after-truncation-race");
    }

    @Test
    void segmentsThatCannotBeOpenedAreRefused() throws IOException {
        String model = register();
        Path sub = Files.createDirectory(dir.resolve("optsidecar-a-directory"));
        try (TestSegment good = segment()) {
            Path link = Files.createSymbolicLink(dir.resolve("optsidecar-link"), good.path);
            SharedSegment base = good.message;
            List<Object[]> cases = List.of(
                    new Object[] {base.toBuilder().setName("../" + base.getName()).build(),
                            Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "separator"},
                    new Object[] {base.toBuilder().setName("a/b").build(), Status.Code.INVALID_ARGUMENT,
                            "INVALID_FIELD", "separator"},
                    new Object[] {base.toBuilder().setName("..").build(), Status.Code.INVALID_ARGUMENT,
                            "INVALID_FIELD", "'..'"},
                    new Object[] {base.toBuilder().setName("").build(), Status.Code.INVALID_ARGUMENT,
                            "INVALID_FIELD", "empty"},
                    new Object[] {base.toBuilder().setName(link.getFileName().toString()).build(),
                            Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_UNAVAILABLE", "not a regular file"},
                    new Object[] {base.toBuilder().setName(sub.getFileName().toString()).build(),
                            Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_UNAVAILABLE", "not a regular file"},
                    new Object[] {base.toBuilder().setName("optsidecar-missing").build(),
                            Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_UNAVAILABLE", "does not exist"},
                    new Object[] {base.toBuilder().setGradientOffsets(2, good.size()).build(),
                            Status.Code.FAILED_PRECONDITION, "SHARED_MEMORY_UNAVAILABLE", "its offsets need"},
                    new Object[] {base.toBuilder().setGradientOffsets(1, base.getWeightsOffsets(0) + 8).build(),
                            Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "overlaps"},
                    new Object[] {base.toBuilder().setWeightsOffsets(1, base.getWeightsOffsets(1) + 4).build(),
                            Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "not a multiple of 8"},
                    new Object[] {base.toBuilder().clearGradientOffsets().build(),
                            Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "0 offsets for a model of 3 tensors"},
                    new Object[] {base.toBuilder().setWeightsOffsets(0, -8L).build(),
                            Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "past any file"});
            for (Object[] c : cases) {
                RawStep s = open(model, (SharedSegment) c[0]);
                assertReason(s.awaitClose(), (Status.Code) c[1], (String) c[2], (String) c[3]);
                assertEquals(0, f.sharedMemory().openSegments(), () -> "left open: " + c[0]);
                var pull = f.blocking().pull(PullRequest.newBuilder().setModel(model).setShared((SharedSegment) c[0])
                        .build());
                StatusRuntimeException e = assertThrows(StatusRuntimeException.class, pull::next);
                assertEquals(c[1], e.getStatus().getCode(), e::toString);
            }
            assertUnchanged(model, 0, initialWeights(7));
        }
    }

    @Test
    void aServerWithoutShmDirRefusesSegments() throws IOException {
        try (SidecarFixture plain = SidecarFixture.inProcess().start();
             TestSegment seg = segment()) {
            String model = "plain";
            plain.client().register(StandardModel.adamSpec(model), tensors(initialWeights(7)));
            assertEquals("", plain.blocking().serverInfo(ServerInfoRequest.getDefaultInstance()).getShmDir());
            RawStep s = RawStep.start(plain.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                    .setModel(model).setClientId("t").setShared(seg.message)).build());
            Status end = s.awaitClose();
            assertEquals(Status.Code.FAILED_PRECONDITION, end.getCode());
            assertTrue(end.getDescription().contains("--shm-dir"), end::toString);
            ErrorInfo info = dev.optsidecar.server.StatusAssertions.errorInfo(
                    dev.optsidecar.server.StatusAssertions.details(plain.errorsSent().get(0).status(),
                            plain.errorsSent().get(0).trailers()));
            assertEquals("SHARED_MEMORY_UNAVAILABLE", info.getReason());
        }
    }
}
