package dev.optsidecar.server.model;

import com.google.protobuf.ByteString;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.proto.v1.WireDtype;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.HalfFloatReference;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicInteger;

import static dev.optsidecar.server.StandardModel.SIZES;
import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.spec;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.StandardModel.zeros;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Chunks of bfloat16 or float16 (StepOpen.wire_dtype, PullRequest.wire_dtype): the server keeps
 * float32 weights and state, so a 16-bit step is, bit for bit, the float32 step of the same values,
 * and the weights sent back are the float32 weights rounded to nearest even. Bad 16-bit input is
 * refused like bad float32 input and changes nothing.
 */
class WireDtypeTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();
    private static final AtomicInteger SEQ = new AtomicInteger();
    private static final View TRAIN = View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build();

    private static HalfFloatReference format(WireDtype wire) {
        return wire == WireDtype.WIRE_BFLOAT16 ? HalfFloatReference.BFLOAT16 : HalfFloatReference.FLOAT16;
    }

    private static ModelSpec radam(String prefix) {
        return spec(prefix + "-" + SEQ.incrementAndGet(), "RAdam", struct("lr", 0.01, "weight_decay", 0.1),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED);
    }

    private static String register(ModelSpec spec) {
        f.client().register(spec, tensors(initialWeights(3)));
        return spec.getName();
    }

    @ParameterizedTest
    @EnumSource(value = WireDtype.class, names = {"WIRE_BFLOAT16", "WIRE_FLOAT16"})
    void aSixteenBitStepIsTheFloat32StepOfTheRoundedGradients(WireDtype wire) {
        HalfFloatReference format = format(wire);
        String narrow = register(radam("narrow"));
        String wide = register(radam("wide"));
        OptSidecarClient client = f.client();
        try (Trainer a = client.trainer(narrow, "a", wire); Trainer b = client.trainer(wide, "b")) {
            for (int k = 1; k <= 3; k++) {
                float[][] sentAsSixteen = zeros();
                float[][] sentAsFloat32 = zeros();
                a.step(grads(k), sentAsSixteen);
                b.step(format.rounded(grads(k)), sentAsFloat32);
                assertBitsEqual(format.rounded(sentAsFloat32), sentAsSixteen, "weights returned after step " + k);
            }
        }
        assertBitsEqual(f.pull(wide), f.pull(narrow), "the float32 master weights");
    }

    @ParameterizedTest
    @EnumSource(value = WireDtype.class, names = {"WIRE_BFLOAT16", "WIRE_FLOAT16"})
    void pulledChunksHoldTheRoundedBitsInChunksOfOneMebibyte(WireDtype wire) {
        HalfFloatReference format = format(wire);
        String model = register(radam("pull"));
        f.step(model, grads(1), zeros());
        float[][] master = f.pull(model);
        Iterator<WeightsChunk> chunks = f.blocking().pull(PullRequest.newBuilder().setModel(model).setView(TRAIN)
                .setWireDtype(wire).build());
        long[] seen = new long[SIZES.length];
        while (chunks.hasNext()) {
            WeightsChunk c = chunks.next();
            assertTrue(c.getData().size() <= 1 << 20, "a chunk holds at most 1 MiB");
            assertEquals(1, c.getVersion());
            ByteBuffer data = c.getData().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
            int count = data.remaining() / 2;
            assertEquals(seen[c.getTensor()], c.getOffset(), "chunks in order, offsets counting elements");
            for (int i = 0; i < count; i++) {
                float v = master[c.getTensor()][(int) c.getOffset() + i];
                assertEquals(format.round(v), data.getShort() & 0xffff, "element " + (c.getOffset() + i));
            }
            seen[c.getTensor()] += count;
        }
        for (int t = 0; t < SIZES.length; t++) {
            assertEquals(SIZES[t], seen[t], "elements of tensor " + t);
        }
        float[][] widened = zeros();
        f.client().pull(model, TRAIN, tensors(widened), List.of(), wire);
        assertBitsEqual(format.rounded(master), widened, "the Java client's pull, widened");
    }

    @ParameterizedTest
    @EnumSource(value = WireDtype.class, names = {"WIRE_BFLOAT16", "WIRE_FLOAT16"})
    void aComputedViewIsTheFloat32ViewRounded(WireDtype wire) {
        // Schedule-Free's eval point x is computed from y and z as it is read: its 16-bit chunks
        // are rounded from the computed values, and a step's 16-bit reply asking for it too.
        View eval = View.newBuilder().setKind(ViewKind.VIEW_EVAL).build();
        String model = register(spec("computed-" + SEQ.incrementAndGet(), "RAdamScheduleFree", struct("lr", 0.01),
                NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED));
        float[][] replied = zeros();
        try (Trainer a = f.client().trainer(model, "a", wire)) {
            a.step(grads(1), zeros());
            a.step(tensors(grads(2)), tensors(replied), new Trainer.StepOptions().view(eval));
        }
        float[][] wide = zeros();
        float[][] narrow = zeros();
        f.client().pull(model, eval, tensors(wide), List.of(), WireDtype.WIRE_FLOAT32);
        f.client().pull(model, eval, tensors(narrow), List.of(), wire);
        assertBitsEqual(format(wire).rounded(wide), narrow, "the eval view pulled in 16 bits");
        assertBitsEqual(format(wire).rounded(wide), replied, "the eval view a 16-bit step replied with");
    }

    @ParameterizedTest
    @EnumSource(value = WireDtype.class, names = {"WIRE_BFLOAT16", "WIRE_FLOAT16"})
    void sixteenBitWeightsSetAreTheirExactValues(WireDtype wire) {
        HalfFloatReference format = format(wire);
        String narrow = register(radam("set-narrow"));
        String wide = register(radam("set-wide"));
        float[][] edited = initialWeights(77);
        try (Trainer a = f.client().trainer(narrow, "a", wire); Trainer b = f.client().trainer(wide, "b")) {
            a.step(grads(1), zeros());
            b.step(format.rounded(grads(1)), zeros());
            a.setWeights(tensors(edited));
            b.setWeights(tensors(format.rounded(edited)));
            a.step(grads(2), zeros());
            b.step(format.rounded(grads(2)), zeros());
        }
        assertBitsEqual(f.pull(wide), f.pull(narrow), "weights after a 16-bit set and a step");
    }

    @Test
    void aSyncStepSendsEachTrainerItsOwnWireType() {
        String model = register(radam("sync").toBuilder().setCoordination(TestData.sync(2, 0, 0)).build());
        float[][] asBfloat16 = zeros();
        float[][] asFloat32 = zeros();
        try (Trainer a = f.client().trainer(model, "a", WireDtype.WIRE_BFLOAT16).attach();
             Trainer b = f.client().trainer(model, "b").attach()) {
            CompletableFuture<StepResult> first = CompletableFuture.supplyAsync(() -> a.step(grads(1), asBfloat16));
            b.step(grads(2), asFloat32);
            first.join();
        }
        assertBitsEqual(f.pull(model), asFloat32, "the float32 trainer's weights");
        assertBitsEqual(HalfFloatReference.BFLOAT16.rounded(asFloat32), asBfloat16, "the bfloat16 trainer's weights");
    }

    /** A Step stream opened with {@code wire}. */
    private static RawStep open(String model, WireDtype wire) {
        return RawStep.start(f.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                .setModel(model).setClientId("raw-" + SEQ.incrementAndGet()).setWireDtype(wire)).build());
    }

    private static ByteString sixteen(int count, int at, int bits) {
        ByteBuffer b = ByteBuffer.allocate(2 * count).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < count; i++) {
            b.putShort((short) (i == at ? bits : 0x3c00)); // finite in both types
        }
        return ByteString.copyFrom(b.array());
    }

    @Test
    void nonFiniteSixteenBitValuesAreRefused() {
        String model = register(radam("nan"));
        float[][] before = f.pull(model);
        Status nan = open(model, WireDtype.WIRE_BFLOAT16).chunk(1, 1, 0, sixteen(SIZES[1], 7, 0x7fc1)).awaitClose();
        assertStatus(Status.Code.INVALID_ARGUMENT, nan, "'b'", "element 7", "non-finite");
        // float16 has no value past 65504: what was bigger arrives as Inf.
        Status inf = open(model, WireDtype.WIRE_FLOAT16).chunk(1, 0, 100, sixteen(1000, 999, 0xfc00)).awaitClose();
        assertStatus(Status.Code.INVALID_ARGUMENT, inf, "'w'", "element 1099", "non-finite");
        assertBitsEqual(before, f.pull(model), "weights after the refused steps");
        assertEquals(0, f.describe(model).getVersion());
    }

    @Test
    void chunksThatAreNotWholeSixteenBitValuesOrTooLargeAreRefused() {
        String model = register(radam("odd"));
        Status odd = open(model, WireDtype.WIRE_BFLOAT16).chunk(1, 0, 0, ByteString.copyFrom(new byte[7])).awaitClose();
        assertStatus(Status.Code.INVALID_ARGUMENT, odd, "chunk.data", "7 bytes", "bfloat16");
        Status large = open(model, WireDtype.WIRE_FLOAT16).chunk(1, 0, 0, sixteen((1 << 19) + 1, -1, 0))
                .awaitClose();
        assertStatus(Status.Code.INVALID_ARGUMENT, large, "chunk.data", "exceeds");
        // Offsets count elements: 16-bit elements past the tensor's end are out of range.
        Status outside = open(model, WireDtype.WIRE_FLOAT16).chunk(1, 1, 400, sixteen(101, -1, 0)).awaitClose();
        assertStatus(Status.Code.INVALID_ARGUMENT, outside, "chunk.offset", "[400, 501)");
        assertEquals(0, f.describe(model).getVersion());
    }

    @Test
    void unknownWireTypesAreRefused() {
        String model = register(radam("unknown"));
        Status step = RawStep.start(f.async()).send(StepRequest.newBuilder().setOpen(StepOpen.newBuilder()
                .setModel(model).setWireDtypeValue(9)).build()).awaitClose();
        assertStatus(Status.Code.INVALID_ARGUMENT, step, "open.wire_dtype", "9");
        assertStatus(Status.Code.INVALID_ARGUMENT, () -> f.blocking().pull(PullRequest.newBuilder().setModel(model)
                .setWireDtypeValue(-3).build()).hasNext(), "wire_dtype", "-3");
    }

    @Test
    void aSixteenBitStepAnswersWithChunksOfItsType() {
        String model = register(radam("raw"));
        RawStep s = open(model, WireDtype.WIRE_BFLOAT16);
        for (int t = 0; t < SIZES.length; t++) {
            s.chunk(1, t, 0, sixteen(SIZES[t], -1, 0));
        }
        s.commit(1, ViewKind.VIEW_TRAIN).halfClose();
        assertEquals(Status.Code.OK, s.awaitClose().getCode());
        long elements = 0;
        for (StepResponse r : s.responses) {
            if (r.hasWeights()) {
                elements += r.getWeights().getData().size() / 2;
            }
        }
        assertEquals(SIZES[0] + SIZES[1] + SIZES[2], elements, "two bytes per element came back");
    }
}
