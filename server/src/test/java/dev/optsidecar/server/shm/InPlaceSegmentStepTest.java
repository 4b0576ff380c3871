package dev.optsidecar.server.shm;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import io.grpc.Status;
import io.prometheus.metrics.model.snapshots.CounterSnapshot;
import io.prometheus.metrics.model.snapshots.MetricSnapshot;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.StandardModel.SIZES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Steps applied straight from a sealed segment (one pass: the gradient read there, the weights
 * checked and written back there, the new parameters and state swapped in after), against the
 * real server: the bits of the copying path, step for step, and every refusal (weights the
 * trainer wrote, a NaN) leaving the model and the trainer's segment as they were.
 */
class InPlaceSegmentStepTest {
    /** RAdam leaves its SGD phase (ρt ≤ 5) after a few steps; from then on a step can go in place. */
    private static final int STEPS = 12;
    private static Path dir;
    private static SidecarFixture f;
    private static final AtomicInteger SEQ = new AtomicInteger();

    @BeforeAll
    static void start() throws IOException {
        dir = Files.createTempDirectory("shm-in-place");
        f = SidecarFixture.inProcess().sharedMemory(dir).start();
    }

    @AfterAll
    static void stop() throws IOException {
        f.close();
        TestSegment.deleteDirectory(dir);
    }

    /** RAdam with decoupled weight decay on w and torch 2.x's lerp for the first moment, or the plain form. */
    private static String register(SidecarFixture fixture, boolean torch2) {
        return register(fixture, torch2 ? "RAdam(torch2.x)" : "RAdam");
    }

    /**
     * A model of {@code algorithm}: RAdam's two forms (torch 2.x's with decoupled weight decay on
     * w), Adam with coupled weight decay, AdamW with its own.
     */
    private static String register(SidecarFixture fixture, String algorithm) {
        String name = "model-" + SEQ.incrementAndGet();
        Struct hp = switch (algorithm) {
            case "RAdam(torch2.x)" -> TestData.hp("lr", 0.01, "betas", List.of(0.8, 0.95), "weight_decay", 0.01,
                    "decoupled_weight_decay", true);
            case "Adam" -> TestData.hp("lr", 0.01, "betas", List.of(0.8, 0.95), "weight_decay", 0.01);
            default -> TestData.hp("lr", 0.01, "betas", List.of(0.8, 0.95));
        };
        fixture.client().register(StandardModel.spec(name, algorithm, hp, NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED),
                tensors(initialWeights(7)));
        return name;
    }

    private static TestSegment sealed(SidecarFixture fixture) throws IOException {
        String socket = fixture.blocking().serverInfo(ServerInfoRequest.getDefaultInstance()).getSegmentSocket();
        return TestSegment.sealed(dir(fixture).resolve(socket), SIZES);
    }

    private static Path dir(SidecarFixture fixture) {
        return Path.of(fixture.blocking().serverInfo(ServerInfoRequest.getDefaultInstance()).getShmDir());
    }

    private static RawStep open(SidecarFixture fixture, String model, TestSegment seg) {
        return RawStep.start(fixture.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                .setModel(model).setClientId("trainer-" + SEQ.incrementAndGet()).setShared(seg.message)).build());
    }

    /** A gradient step's commit with the CRC-32C records of the trainer's weights, as the Python trainer sends it. */
    private static StepCommit commit(long stepId, List<Integer> weightsCrc32c) {
        return StepCommit.newBuilder().setStepId(stepId).setView(View.newBuilder().setKind(ViewKind.VIEW_TRAIN))
                .addAllWeightsCrc32C(weightsCrc32c).build();
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"RAdam", "RAdam(torch2.x)", "Adam", "AdamW"})
    void stepsGoInPlaceWithTheBitsOfTheCopyingPath(String algorithm) throws IOException {
        String copied = register(f, algorithm);
        String inPlace = register(f, algorithm);
        double before = segmentSteps(f, inPlace, "in_place");
        try (TestSegment seg = sealed(f)) {
            RawStep s = open(f, inPlace, seg);
            List<Integer> records = List.of();
            for (int k = 1; k <= STEPS; k++) {
                float[][] expected = StandardModel.zeros();
                StepResult viaChunks = f.step(copied, grads(k), expected);
                seg.putGradients(grads(k));
                s.commit(commit(k, records));
                StepResult r = s.resultWithoutChunks(k);
                assertEquals(Double.doubleToRawLongBits(viaChunks.getGradNorm()),
                        Double.doubleToRawLongBits(r.getGradNorm()), "gradient norm, step " + k);
                assertEquals(k, r.getVersion());
                assertEquals(k, r.getWeightsVersion());
                assertTrue(r.getWeightsInSegment());
                assertBitsEqual(expected, seg.weights(), "weights in the segment, step " + k);
                assertEquals(SharedMemoryStepTest.crc32cOf(seg.weights()), r.getWeightsCrc32CList(),
                        "CRC-32C of each piece written, step " + k);
                records = r.getWeightsCrc32CList();
            }
            s.halfClose();
            assertEquals(Status.Code.OK, s.awaitClose().getCode());
        }
        // RAdam's SGD phase is copied, and a first step finds the segment's weights not yet the model's.
        double steps = segmentSteps(f, inPlace, "in_place") - before;
        assertTrue(steps >= (algorithm.startsWith("RAdam") ? STEPS - 6 : STEPS - 1), "steps in place: " + steps);
        for (String slot : List.of("exp_avg", "exp_avg_sq")) {
            View view = View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build();
            assertBitsEqual(pull(copied, view), pull(inPlace, view), slot);
        }
        assertBitsEqual(f.pull(copied), f.pull(inPlace), "pulled weights");
    }

    @Test
    void weightsTheTrainerWroteAreRefusedAndLeftAsItWroteThem() throws IOException {
        String model = register(f, true);
        try (TestSegment seg = sealed(f)) {
            RawStep s = open(f, model, seg);
            List<Integer> records = stepUntilInPlace(s, seg, model);
            long version = f.describe(model).getVersion();
            float[][] edited = seg.weights();
            edited[0][200_000] += 1f; // mid-piece: what the pass wrote before finding it is put back
            seg.putWeights(edited);
            seg.putGradients(grads(50));
            s.commit(commit(version + 1, records));
            assertEquals(Status.Code.FAILED_PRECONDITION, s.awaitClose().getCode());
            assertEquals(version, f.describe(model).getVersion());
            assertBitsEqual(edited, seg.weights(), "the trainer's weights, its edit included");
            edited[0][200_000] -= 1f;
            assertBitsEqual(edited, f.pull(model), "the model's weights");
        }
    }

    @Test
    void aNonFiniteGradientChangesNeitherTheModelNorTheSegment() throws IOException {
        String model = register(f, false);
        try (TestSegment seg = sealed(f)) {
            RawStep s = open(f, model, seg);
            List<Integer> records = stepUntilInPlace(s, seg, model);
            long version = f.describe(model).getVersion();
            float[][] weights = seg.weights();
            float[][] g = grads(51);
            g[0][299_999] = Float.POSITIVE_INFINITY; // late in w: what the pass wrote before is put back
            seg.putGradients(g);
            s.commit(commit(version + 1, records));
            Status status = s.awaitClose();
            assertEquals(Status.Code.INVALID_ARGUMENT, status.getCode());
            assertTrue(String.valueOf(status.getDescription()).contains("299999"), status::toString);
            assertEquals(version, f.describe(model).getVersion());
            assertBitsEqual(weights, seg.weights(), "the segment's weights");
            assertBitsEqual(weights, f.pull(model), "the model's weights");
        }
    }

    /**
     * A trainer that rewrites its gradient while its steps run, NaN and back: each step is applied
     * with values it wrote, or refused with the model as it was; the model never holds a NaN.
     */
    @Test
    void aGradientRewrittenDuringStepsNeverReachesTheModelHalfApplied() throws Exception {
        String model = register(f, false);
        try (TestSegment seg = sealed(f)) {
            RawStep first = open(f, model, seg);
            stepUntilInPlace(first, seg, model);
            first.halfClose();
            assertEquals(Status.Code.OK, first.awaitClose().getCode());
            float[][] finite = grads(60);
            float[][] spoiled = grads(60);
            for (int i = 0; i < spoiled[0].length; i += 9_999) {
                spoiled[0][i] = Float.NaN;
            }
            java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
            Thread hostile = new Thread(() -> {
                java.util.Random random = new java.util.Random(61);
                while (!stop.get()) { // about half the time spoiled: some steps see a NaN, some run clean
                    seg.putGradients(spoiled);
                    java.util.concurrent.locks.LockSupport.parkNanos(random.nextInt(2_000_000));
                    seg.putGradients(finite);
                    java.util.concurrent.locks.LockSupport.parkNanos(random.nextInt(2_000_000));
                }
            });
            double inPlaceBefore = segmentSteps(f, model, "in_place");
            hostile.start();
            int applied = 0;
            int refused = 0;
            try {
                for (int k = 0; k < 40; k++) {
                    long version = f.describe(model).getVersion();
                    float[][] before = f.pull(model);
                    RawStep s = open(f, model, seg);
                    s.commit(commit(1_000 + k, List.of()));
                    s.halfClose();
                    Status status = s.awaitClose();
                    float[][] after = f.pull(model);
                    for (float[] tensor : after) {
                        for (float value : tensor) {
                            assertTrue(Float.isFinite(value), "a non-finite weight after step " + k);
                        }
                    }
                    if (status.isOk()) {
                        applied++;
                        assertEquals(version + 1, f.describe(model).getVersion());
                    } else {
                        refused++;
                        assertEquals(Status.Code.INVALID_ARGUMENT, status.getCode(), status::toString);
                        assertEquals(version, f.describe(model).getVersion());
                        assertBitsEqual(before, after, "the model after a refused step");
                    }
                }
            } finally {
                stop.set(true);
                hostile.join();
            }
            assertTrue(refused > 0, "no step saw a NaN (" + applied + " applied)");
            assertTrue(segmentSteps(f, model, "in_place") > inPlaceBefore, "no step went in place");
        }
        f.assertServerHealthy("healthy-after-rewrites");
    }

    @Test
    void withoutRoomForTheSecondBuffersStepsAreCopied(@TempDir Path shm) throws IOException {
        long modelBytes = 0;
        long trainerBytes = 0;
        for (int n : SIZES) {
            modelBytes += n * 4L * 4; // θ, gradient, two state slots
            trainerBytes += n * 4L;
        }
        // Room for the model, a trainer's gradient buffers and a step's records, not for θ and state again
        // (three quarters of the model's bytes).
        try (SidecarFixture small = SidecarFixture.inProcess(modelBytes + trainerBytes + (1 << 20))
                .sharedMemory(shm).start()) {
            String model = register(small, false);
            try (TestSegment seg = sealed(small)) {
                RawStep s = open(small, model, seg);
                for (int k = 1; k <= STEPS; k++) {
                    seg.putGradients(grads(k));
                    s.commit(commit(k, List.of()));
                    assertEquals(k, s.resultWithoutChunks(k).getVersion());
                }
                s.halfClose();
                assertEquals(Status.Code.OK, s.awaitClose().getCode());
            }
            assertEquals(0.0, segmentSteps(small, model, "in_place"));
            assertEquals(STEPS, segmentSteps(small, model, "copied"));
        }
    }

    /** Steps until a step went in place; returns the records of the weights that step wrote. */
    private static List<Integer> stepUntilInPlace(RawStep s, TestSegment seg, String model) {
        List<Integer> records = List.of();
        for (int k = 1; k <= STEPS; k++) {
            seg.putGradients(grads(k));
            s.commit(commit(k, records));
            records = s.resultWithoutChunks(k).getWeightsCrc32CList();
            if (segmentSteps(f, model, "in_place") > 0) {
                return records;
            }
        }
        throw new AssertionError("no step went in place in " + STEPS);
    }

    private static float[][] pull(String model, View view) {
        float[][] out = StandardModel.zeros();
        f.client().pull(model, view, tensors(out));
        return out;
    }

    /** optsidecar_segment_steps_total of {@code model} by {@code path}. */
    private static double segmentSteps(SidecarFixture fixture, String model, String path) {
        double total = 0;
        for (MetricSnapshot snapshot : fixture.server().registry().metrics().registry().scrape()) {
            if (snapshot.getMetadata().getName().equals("optsidecar_segment_steps")) {
                for (CounterSnapshot.CounterDataPointSnapshot point : ((CounterSnapshot) snapshot).getDataPoints()) {
                    if (model.equals(point.getLabels().get("model")) && path.equals(point.getLabels().get("path"))) {
                        total += point.getValue();
                    }
                }
            }
        }
        return total;
    }
}
