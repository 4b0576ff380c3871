package dev.optsidecar.client;

import com.google.protobuf.ByteString;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.TensorInfo;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.proto.v1.WireDtype;
import io.grpc.ManagedChannel;
import io.grpc.Server;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * What the client puts on the wire, seen by a recording server: chunk sizes and offsets, the
 * commit, no_grad, and that returned weights land in the caller's arrays.
 */
class ClientProtocolTest {
    private static final int N = 300_000; // more than one 1 MiB chunk

    private final List<WeightsChunk> registered = new ArrayList<>();
    private final List<StepRequest> stepMessages = new ArrayList<>();
    private final List<dev.optsidecar.proto.v1.AddTensorsRequest> added = new ArrayList<>();
    private Server server;
    private ManagedChannel channel;

    /** Answers Register and Step like a server whose weights after a step are grad * 2 (and 1 without a gradient). */
    private final class RecordingService extends OptimizerGrpc.OptimizerImplBase {
        @Override
        public StreamObserver<RegisterRequest> register(StreamObserver<ModelInfo> out) {
            return new StreamObserver<>() {
                ModelSpec spec;

                @Override
                public void onNext(RegisterRequest r) {
                    if (r.hasSpec()) {
                        spec = r.getSpec();
                    } else {
                        registered.add(r.getWeights());
                    }
                }

                @Override
                public void onError(Throwable t) {
                }

                @Override
                public void onCompleted() {
                    out.onNext(info(spec.getName()));
                    out.onCompleted();
                }
            };
        }

        @Override
        public StreamObserver<dev.optsidecar.proto.v1.AddTensorsRequest> addTensors(StreamObserver<ModelInfo> out) {
            return new StreamObserver<>() {
                @Override
                public void onNext(dev.optsidecar.proto.v1.AddTensorsRequest r) {
                    added.add(r);
                }

                @Override
                public void onError(Throwable t) {
                }

                @Override
                public void onCompleted() {
                    out.onNext(info(added.get(0).getSpec().getModel()));
                    out.onCompleted();
                }
            };
        }

        @Override
        public void describe(DescribeRequest request, StreamObserver<ModelInfo> out) {
            out.onNext(info(request.getModel()));
            out.onCompleted();
        }

        @Override
        public StreamObserver<StepRequest> step(StreamObserver<StepResponse> out) {
            return new StreamObserver<>() {
                final List<GradientChunk> chunks = new ArrayList<>();
                boolean bfloat16;

                @Override
                public void onNext(StepRequest r) {
                    stepMessages.add(r);
                    if (r.hasOpen()) {
                        bfloat16 = r.getOpen().getWireDtype() == WireDtype.WIRE_BFLOAT16;
                    } else if (r.hasChunk()) {
                        chunks.add(r.getChunk());
                    } else if (r.hasCommit()) {
                        StepCommit c = r.getCommit();
                        View train = View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build();
                        for (GradientChunk g : chunks) {
                            ByteBuffer in = g.getData().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
                            ByteBuffer doubled = ByteBuffer.allocate(in.remaining()).order(ByteOrder.LITTLE_ENDIAN);
                            while (in.hasRemaining()) {
                                if (bfloat16) { // bfloat16 is float32's top half; doubling is exact
                                    float v = Float.intBitsToFloat((in.getShort() & 0xffff) << 16) * 2;
                                    doubled.putShort((short) (Float.floatToRawIntBits(v) >>> 16));
                                } else {
                                    doubled.putFloat(in.getFloat() * 2);
                                }
                            }
                            out.onNext(StepResponse.newBuilder().setWeights(WeightsChunk.newBuilder()
                                    .setView(train).setVersion(1).setTensor(g.getTensor()).setOffset(g.getOffset())
                                    .setData(ByteString.copyFrom(doubled.flip()))).build());
                        }
                        // The tensor without a gradient comes back too, as the real server sends every tensor.
                        ByteBuffer ones = ByteBuffer.allocate(bfloat16 ? 6 : 12).order(ByteOrder.LITTLE_ENDIAN);
                        for (int i = 0; i < 3; i++) {
                            if (bfloat16) {
                                ones.putShort((short) 0x3f80);
                            } else {
                                ones.putFloat(1);
                            }
                        }
                        ones.flip();
                        out.onNext(StepResponse.newBuilder().setWeights(WeightsChunk.newBuilder()
                                .setView(train).setVersion(1).setTensor(1).setData(ByteString.copyFrom(ones))).build());
                        out.onNext(StepResponse.newBuilder().setResult(StepResult.newBuilder()
                                .setStepId(c.getStepId()).setVersion(1).setView(train)).build());
                    }
                }

                @Override
                public void onError(Throwable t) {
                }

                @Override
                public void onCompleted() {
                    out.onCompleted();
                }
            };
        }
    }

    private static ModelInfo info(String name) {
        return ModelInfo.newBuilder().setName(name)
                .addTensors(TensorInfo.newBuilder().setName("w").setNumel(N))
                .addTensors(TensorInfo.newBuilder().setName("b").setNumel(3))
                .build();
    }

    @BeforeEach
    void start() throws Exception {
        String name = InProcessServerBuilder.generateName();
        server = InProcessServerBuilder.forName(name).directExecutor().addService(new RecordingService()).build().start();
        channel = InProcessChannelBuilder.forName(name).directExecutor().build();
    }

    @AfterEach
    void stop() {
        channel.shutdownNow();
        server.shutdownNow();
    }

    private static float[] ramp(int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = i;
        }
        return a;
    }

    @Test
    void registerSendsEveryElementInChunksOfAtMostOneMebibyte() {
        OptSidecarClient client = new OptSidecarClient(channel);
        ModelSpec spec = ModelSpec.newBuilder().setName("m")
                .addTensors(TensorSpec.newBuilder().setName("w").addShape(N))
                .addTensors(TensorSpec.newBuilder().setName("b").addShape(3)).build();
        client.register(spec, List.of(TensorData.of(ramp(N)), TensorData.of(new float[] {7, 8, 9})));
        long[] expectedOffset = {0, 0};
        for (WeightsChunk c : registered) {
            assertTrue(c.getData().size() <= 1 << 20);
            assertEquals(expectedOffset[c.getTensor()], c.getOffset());
            expectedOffset[c.getTensor()] += c.getData().size() / 4;
        }
        assertArrayEquals(new long[] {N, 3}, expectedOffset);
        assertEquals(3, registered.size()); // 262144 + 37856 floats, then the bias
    }

    @Test
    void addTensorsSendsTheSpecThenTheWeightsIndexedAfterTheModelsTensors() {
        OptSidecarClient client = new OptSidecarClient(channel);
        dev.optsidecar.proto.v1.ParamGroup group = dev.optsidecar.proto.v1.ParamGroup.newBuilder().setName("late").build();
        client.addTensors("m", List.of(TensorSpec.newBuilder().setName("x").addShape(N).build(),
                        TensorSpec.newBuilder().setName("y").addShape(2).build()), group,
                List.of(TensorData.of(ramp(N)), TensorData.of(new float[] {1, 2})));
        assertEquals("m", added.get(0).getSpec().getModel());
        assertEquals(group, added.get(0).getSpec().getGroup());
        assertEquals(2, added.get(0).getSpec().getTensorsCount());
        long[] expectedOffset = {0, 0};
        for (dev.optsidecar.proto.v1.AddTensorsRequest r : added.subList(1, added.size())) {
            WeightsChunk c = r.getWeights();
            assertTrue(c.getData().size() <= 1 << 20);
            int newIndex = c.getTensor() - 2; // the model described has two tensors
            assertEquals(expectedOffset[newIndex], c.getOffset());
            expectedOffset[newIndex] += c.getData().size() / 4;
        }
        assertArrayEquals(new long[] {N, 2}, expectedOffset);
    }

    @Test
    void stepStreamsGradientsCommitsAndWritesWeightsBack() {
        OptSidecarClient client = new OptSidecarClient(channel);
        float[] grad = ramp(N);
        float[] out = new float[N];
        float[] bias = {5, 5, 5};
        try (Trainer trainer = client.trainer("m", "me")) {
            StepResult r = trainer.step(Arrays.asList(TensorData.of(grad), null),
                    List.of(TensorData.of(out), TensorData.of(bias)));
            assertEquals(1, r.getVersion());
        }
        assertEquals(StepRequest.KindCase.OPEN, stepMessages.get(0).getKindCase());
        assertEquals("me", stepMessages.get(0).getOpen().getClientId());
        StepRequest last = stepMessages.get(stepMessages.size() - 1);
        assertEquals(List.of(1), last.getCommit().getNoGradList());
        assertEquals(1, last.getCommit().getStepId());
        for (int i = 0; i < N; i += 9973) {
            assertEquals(2f * i, out[i]);
        }
        assertArrayEquals(new float[] {1, 1, 1}, bias);
    }

    @Test
    void aBfloat16TrainerSendsTwoBytesPerElementAndWidensTheWeights() {
        OptSidecarClient client = new OptSidecarClient(channel);
        int n = 600_000; // more than one chunk of 2^19 16-bit elements
        float[] grad = new float[n];
        for (int i = 0; i < n; i++) {
            grad[i] = (i % 256) - 128; // exact in bfloat16 (8 significant bits)
        }
        float[] out = new float[n];
        float[] bias = {5, 5, 5};
        ModelInfo big = ModelInfo.newBuilder().setName("big")
                .addTensors(TensorInfo.newBuilder().setName("w").setNumel(n))
                .addTensors(TensorInfo.newBuilder().setName("b").setNumel(3)).build();
        try (Trainer trainer = new Trainer(client, "big", "me", big).wireDtype(WireDtype.WIRE_BFLOAT16)) {
            trainer.step(Arrays.asList(TensorData.of(grad), null), List.of(TensorData.of(out), TensorData.of(bias)));
        }
        assertEquals(WireDtype.WIRE_BFLOAT16, stepMessages.get(0).getOpen().getWireDtype());
        List<GradientChunk> sent = stepMessages.stream().filter(StepRequest::hasChunk).map(StepRequest::getChunk).toList();
        assertEquals(List.of(0L, (long) (1 << 19)), sent.stream().map(GradientChunk::getOffset).toList(),
                "offsets count elements: 1 MiB holds 2^19 of them");
        assertEquals(List.of(1 << 20, 2 * (n - (1 << 19))), sent.stream().map(c -> c.getData().size()).toList());
        for (int i = 0; i < n; i++) {
            assertEquals(2 * grad[i], out[i], "element " + i);
        }
        assertArrayEquals(new float[] {1, 1, 1}, bias);
    }
}
