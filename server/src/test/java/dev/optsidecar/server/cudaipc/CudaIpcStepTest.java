package dev.optsidecar.server.cudaipc;

import com.google.protobuf.ByteString;
import com.google.rpc.ErrorInfo;
import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationMode;
import dev.optsidecar.proto.v1.CudaIpcBuffers;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.cuda.EmulatedCuda;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.UnaryOperator;

import static dev.optsidecar.server.StandardModel.SIZES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Steps whose data stays on the GPU (StepOpen.cuda_ipc), on the CUDA engine over the CPU
 * emulation of the device, where a trainer's "device memory" is host memory and its IPC handle
 * names it: the same weights and gradient norm bit for bit as chunks give, eval and set-weights
 * steps, a NaN rejected with the model unchanged, every layout the server must refuse, and the
 * mappings closed when the stream ends.
 */
class CudaIpcStepTest {
    private static SidecarFixture f;
    private static final AtomicInteger SEQ = new AtomicInteger();

    @BeforeAll
    static void start() throws Exception {
        f = SidecarFixture.inProcess(2, 1L << 30).engine(() -> {
            try {
                return (Engine) EmulatedCuda.open(1L << 30);
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        }).start();
    }

    @AfterAll
    static void stop() {
        f.close();
    }

    /**
     * A trainer's allocation, as the Python client lays it out: every tensor's parameters, then
     * every gradient, each region at a multiple of 256 bytes.
     */
    static final class TrainerBuffer {
        final ByteBuffer memory;
        /** Where the buffers start in the allocation. */
        final int base;
        final long[] weightsOffsets = new long[SIZES.length];
        final long[] gradientOffsets = new long[SIZES.length];
        final long paramsBytes;
        final long gradientsBytes;

        TrainerBuffer() {
            this(null, 0);
        }

        /** Buffers at {@code base} in {@code allocation}, or in an allocation of their own when it is null. */
        TrainerBuffer(ByteBuffer allocation, int base) {
            this.base = base;
            long at = 0;
            for (int t = 0; t < SIZES.length; t++) {
                weightsOffsets[t] = at;
                at = aligned(at + 4L * SIZES[t]);
            }
            paramsBytes = at;
            for (int t = 0; t < SIZES.length; t++) {
                gradientOffsets[t] = at - paramsBytes;
                at = aligned(at + 4L * SIZES[t]);
            }
            gradientsBytes = at - paramsBytes;
            memory = allocation != null ? allocation : ByteBuffer.allocateDirect((int) at).order(ByteOrder.LITTLE_ENDIAN);
        }

        static int bytes() {
            TrainerBuffer b = new TrainerBuffer();
            return b.memory.capacity();
        }

        private static long aligned(long n) {
            return (n + 255) / 256 * 256;
        }

        CudaIpcBuffers.Builder message() {
            ByteString handle = ByteString.copyFrom(EmulatedCuda.ipcHandle(memory));
            CudaIpcBuffers.Builder b = CudaIpcBuffers.newBuilder()
                    .setParamsHandle(handle).setParamsOffset(base).setParamsBytes(paramsBytes)
                    .setGradientsHandle(handle).setGradientsOffset(base + paramsBytes).setGradientsBytes(gradientsBytes);
            for (int t = 0; t < SIZES.length; t++) {
                b.addWeightsOffsets(weightsOffsets[t]).addGradientOffsets(gradientOffsets[t]);
            }
            return b;
        }

        void putGradients(float[][] g) {
            put(g, base + paramsBytes, gradientOffsets);
        }

        void putWeights(float[][] w) {
            put(w, base, weightsOffsets);
        }

        private void put(float[][] values, long base, long[] offsets) {
            for (int t = 0; t < values.length; t++) {
                for (int i = 0; i < values[t].length; i++) {
                    memory.putFloat((int) (base + offsets[t]) + 4 * i, values[t][i]);
                }
            }
        }

        float[][] weights() {
            float[][] out = StandardModel.zeros();
            for (int t = 0; t < out.length; t++) {
                for (int i = 0; i < out[t].length; i++) {
                    out[t][i] = memory.getFloat(base + (int) weightsOffsets[t] + 4 * i);
                }
            }
            return out;
        }
    }

    /** The sums a view's result reports: per tensor, its values' bit patterns summed at even and at odd positions. */
    private static List<Long> bitSums(float[][] values) {
        List<Long> sums = new ArrayList<>();
        for (float[] tensor : values) {
            long even = 0;
            long odd = 0;
            for (int i = 0; i < tensor.length; i++) {
                long bits = Float.floatToRawIntBits(tensor[i]);
                if (i % 2 == 0) {
                    even += bits;
                } else {
                    odd += bits;
                }
            }
            sums.add(even);
            sums.add(odd);
        }
        return sums;
    }

    private static String register(String algorithm) {
        String name = "ipc-" + SEQ.incrementAndGet();
        var hp = algorithm.equals("Adam") ? struct("lr", 0.01, "betas", List.of(0.8, 0.95), "weight_decay", 0.01)
                : struct("lr", 0.01, "warmup_steps", 2);
        f.client().register(StandardModel.spec(name, algorithm, hp, NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED),
                tensors(initialWeights(7)));
        return name;
    }

    private static RawStep open(SidecarFixture server, String model, CudaIpcBuffers buffers) {
        return RawStep.start(server.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                .setModel(model).setClientId("trainer-" + SEQ.incrementAndGet()).setCudaIpc(buffers)).build());
    }




    @Test
    void serverInfoNamesTheDevicesUuid() {
        var info = f.blocking().serverInfo(ServerInfoRequest.getDefaultInstance());
        assertEquals("cuda", info.getEngine());
        assertTrue(info.getDeviceUuid().matches("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
                info::getDeviceUuid);
        assertEquals(info.getDeviceUuid(), f.describe(register("Adam")).getDeviceUuid()); // and Describe
    }

    @Test
    void stepsThroughTheDeviceMatchChunksBitForBit() {
        String viaChunks = register("Adam");
        String viaDevice = register("Adam");
        TrainerBuffer buffer = new TrainerBuffer();
        RawStep s = open(f, viaDevice, buffer.message().build());
        for (int k = 1; k <= 3; k++) {
            float[][] expected = StandardModel.zeros();
            StepResult viaChunksResult = f.step(viaChunks, grads(k), expected);
            buffer.putGradients(grads(k));
            s.commit(k, ViewKind.VIEW_TRAIN);
            StepResult r = s.resultWithoutChunks(k);
            // Ingested on the device per 1 MiB piece, in the host ingest's lanes: the norm of chunks, to the bit.
            assertEquals(Double.doubleToRawLongBits(viaChunksResult.getGradNorm()),
                    Double.doubleToRawLongBits(r.getGradNorm()), "gradient norm, step " + k);
            assertTrue(r.getWeightsOnDevice());
            assertEquals(k, r.getWeightsVersion());
            assertBitsEqual(expected, buffer.weights(), "weights written into the trainer's memory, step " + k);
            assertEquals(bitSums(expected), r.getWeightsDeviceSumsList(), "the sums of the weights written");
        }
        s.halfClose();
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        assertBitsEqual(f.pull(viaChunks), f.pull(viaDevice), "pulled weights");
        SidecarFixture.awaitTrue("the mappings closed", () -> EmulatedCuda.openIpcMappings() == 0);
    }

    @Test
    void evalViewAndSetWeightsGoThroughTheDevice() {
        String viaChunks = register("AdamWScheduleFree");
        String viaDevice = register("AdamWScheduleFree");
        TrainerBuffer buffer = new TrainerBuffer();
        RawStep s = open(f, viaDevice, buffer.message().build());
        float[][] newWeights = initialWeights(99);
        buffer.putWeights(newWeights);
        s.send(StepRequest.newBuilder().setCommit(StepCommit.newBuilder().setStepId(1)
                .setKind(StepKind.STEP_SET_WEIGHTS).setView(View.newBuilder().setKind(ViewKind.VIEW_NONE))).build());
        assertEquals(1, s.resultWithoutChunks(1).getVersion());
        assertBitsEqual(newWeights, f.pull(viaDevice), "weights set from the trainer's memory");
        try (var trainer = f.client().trainer(viaChunks, "chunks")) {
            trainer.setWeights(tensors(newWeights));
            trainer.step(grads(1), StandardModel.zeros());
        }
        buffer.putGradients(grads(1));
        s.commit(2, ViewKind.VIEW_EVAL);
        StepResult r = s.resultWithoutChunks(2);
        assertTrue(r.getWeightsOnDevice());
        float[][] expectedEval = StandardModel.zeros();
        f.client().pull(viaChunks, View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(), tensors(expectedEval));
        assertBitsEqual(expectedEval, buffer.weights(), "the eval point computed into the trainer's memory");
        assertEquals(bitSums(expectedEval), r.getWeightsDeviceSumsList(), "the sums of the eval point");
        s.halfClose();
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
    }

    /**
     * Two trainers of a sync step whose buffers lie in one allocation (one handle, mapped once):
     * both receive the weights of one step with the mean of their gradients, from the copy the
     * step shares among its contributors.
     */
    @Test
    void syncTrainersSharingAnAllocationBothReceiveTheStepsWeights() {
        String viaChunks = register("Adam");
        String viaDevice = "ipc-sync-" + SEQ.incrementAndGet();
        f.client().register(StandardModel.adamSpec(viaDevice).toBuilder()
                .setCoordination(Coordination.newBuilder().setMode(CoordinationMode.COORDINATION_SYNC)
                        .setSync(SyncOptions.newBuilder().setK(2))).build(), tensors(initialWeights(7)));
        int size = TrainerBuffer.bytes();
        ByteBuffer allocation = ByteBuffer.allocateDirect(2 * size).order(ByteOrder.LITTLE_ENDIAN);
        TrainerBuffer a = new TrainerBuffer(allocation, 0);
        TrainerBuffer b = new TrainerBuffer(allocation, size);
        a.putGradients(grads(1));
        b.putGradients(grads(2));
        RawStep first = open(f, viaDevice, a.message().build());
        RawStep second = open(f, viaDevice, b.message().build());
        first.commit(1, ViewKind.VIEW_TRAIN);
        second.commit(1, ViewKind.VIEW_TRAIN);
        StepResult r1 = first.resultWithoutChunks(1);
        StepResult r2 = second.resultWithoutChunks(1);
        assertTrue(r1.getWeightsOnDevice() && r2.getWeightsOnDevice());
        assertEquals(1, r1.getVersion());
        // The sync step's mean: the two gradients added, then halved, in float32.
        float[][] mean = grads(1);
        float[][] other = grads(2);
        for (int t = 0; t < mean.length; t++) {
            for (int i = 0; i < mean[t].length; i++) {
                mean[t][i] = (mean[t][i] + other[t][i]) / 2f;
            }
        }
        float[][] expected = StandardModel.zeros();
        f.step(viaChunks, mean, expected);
        assertBitsEqual(expected, a.weights(), "the first trainer's weights");
        assertBitsEqual(expected, b.weights(), "the second trainer's weights");
        assertEquals(bitSums(expected), r1.getWeightsDeviceSumsList(), "the sums of the weights copied in");
        assertEquals(bitSums(expected), r2.getWeightsDeviceSumsList(), "the sums of the weights copied in");
        first.halfClose();
        second.halfClose();
        assertEquals(Status.Code.OK, first.awaitClose().getCode());
        assertEquals(Status.Code.OK, second.awaitClose().getCode());
        SidecarFixture.awaitTrue("the shared allocation unmapped", () -> EmulatedCuda.openIpcMappings() == 0);
    }

    @Test
    void aNonFiniteGradientIsRejectedAndChangesNothing() {
        String model = register("Adam");
        float[][] before = f.pull(model);
        TrainerBuffer buffer = new TrainerBuffer();
        float[][] g = grads(1);
        g[0][270_000] = Float.NaN; // in the second 1 MiB piece of tensor 0
        buffer.putGradients(g);
        RawStep s = open(f, model, buffer.message().build());
        s.commit(1, ViewKind.VIEW_TRAIN);
        Status status = s.awaitClose();
        assertEquals(Status.Code.INVALID_ARGUMENT, status.getCode());
        assertTrue(status.getDescription().contains("element 270000"), status::getDescription);
        assertEquals("open.cuda_ipc.gradient_offsets", errorInfo(s).getMetadataMap().get("field"));
        assertEquals("NON_FINITE_GRADIENT", errorInfo(s).getReason());
        assertBitsEqual(before, f.pull(model), "weights after the rejected step");
        assertEquals(0, f.describe(model).getVersion());
    }

    private static ErrorInfo errorInfo(RawStep s) {
        try {
            com.google.rpc.Status details = StatusProto.fromThrowable(s.error);
            for (var any : details.getDetailsList()) {
                if (any.is(ErrorInfo.class)) {
                    return any.unpack(ErrorInfo.class);
                }
            }
        } catch (com.google.protobuf.InvalidProtocolBufferException e) {
            throw new AssertionError(e);
        }
        throw new AssertionError("no ErrorInfo in " + s.error);
    }

    /** Opens a stream with a spoiled layout and returns how it ended. */
    private static RawStep refused(SidecarFixture server, UnaryOperator<CudaIpcBuffers.Builder> spoil) {
        String model = server == f ? register("Adam") : "cpu-model";
        RawStep s = open(server, model, spoil.apply(new TrainerBuffer().message()).build());
        s.awaitClose();
        return s;
    }

    private static void assertRefused(RawStep s, Status.Code code, String reason, String field, String fragment) {
        Status status = s.awaitClose();
        assertEquals(code, status.getCode(), () -> "status " + status);
        assertTrue(status.getDescription().contains(fragment), status::getDescription);
        ErrorInfo info = errorInfo(s);
        assertEquals(reason, info.getReason());
        assertEquals(field, info.getMetadataMap().get("field"));
    }

    @Test
    void layoutsThatDoNotFitAreInvalidArgumentNamingTheField() {
        assertRefused(refused(f, b -> b.clearWeightsOffsets().addWeightsOffsets(0)), Status.Code.INVALID_ARGUMENT,
                "INVALID_FIELD", "open.cuda_ipc.weights_offsets", "1 offsets for a model of 3 tensors");
        assertRefused(refused(f, b -> b.setGradientOffsets(1, 2)), Status.Code.INVALID_ARGUMENT, "INVALID_FIELD",
                "open.cuda_ipc.gradient_offsets", "not a multiple of 4 bytes");
        assertRefused(refused(f, b -> b.setGradientOffsets(2, b.getGradientsBytes())), Status.Code.INVALID_ARGUMENT,
                "INVALID_FIELD", "open.cuda_ipc.gradient_offsets", "end past the buffer's");
        assertRefused(refused(f, b -> b.setWeightsOffsets(1, 4)), Status.Code.INVALID_ARGUMENT, "INVALID_FIELD",
                "open.cuda_ipc.weights_offsets", "the regions of tensors 0 and 1 overlap");
        // A buffer that claims more than its allocation holds: checked against what the handle maps.
        assertRefused(refused(f, b -> b.setGradientsBytes(b.getGradientsBytes() + 4096)),
                Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "open.cuda_ipc", "lie outside the");
        assertRefused(refused(f, b -> b.setParamsHandle(ByteString.copyFrom(new byte[10]))),
                Status.Code.INVALID_ARGUMENT, "INVALID_FIELD", "open.cuda_ipc.params_handle", "64 bytes, not 10");
        assertEquals(0, EmulatedCuda.openIpcMappings(), "a refused layout leaves nothing mapped");
    }

    @Test
    void aHandleThatDoesNotOpenIsFailedPrecondition() {
        assertRefused(refused(f, b -> b.setGradientsHandle(ByteString.copyFrom(new byte[64]))),
                Status.Code.FAILED_PRECONDITION, "CUDA_IPC_UNAVAILABLE", "open.cuda_ipc",
                "gradients_handle does not open on the server's GPU");
        SidecarFixture.awaitTrue("the parameters' mapping closed", () -> EmulatedCuda.openIpcMappings() == 0);
    }

    @Test
    void theCpuEngineRefusesCudaIpc() throws Exception {
        try (SidecarFixture cpu = SidecarFixture.inProcess().start()) {
            cpu.client().register(StandardModel.adamSpec("cpu-model"), tensors(initialWeights(7)));
            assertRefused(refused(cpu, b -> b), Status.Code.FAILED_PRECONDITION, "CUDA_IPC_UNAVAILABLE",
                    "open.cuda_ipc", "the server's engine is cpu");
            assertEquals(0, cpu.describe("cpu-model").getVersion());
        }
    }
}
