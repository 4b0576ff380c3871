package dev.optsidecar.server.api;

import com.google.protobuf.ByteString;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import io.grpc.ManagedChannel;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * A client that sends several steps without waiting for the weights of the previous one: the
 * server must apply them in order, answer each with the weights of its own version, and not
 * deadlock between a step's weights still streaming out and the next commit. On a real socket,
 * where both directions are held back by HTTP/2 flow control.
 */
class PipelinedStepsTest {
    @Test
    void stepsSentBackToBackAreAppliedInOrder() throws Exception {
        int n = 600_000; // several chunks each way
        float[] init = TestData.random(n, 1);
        List<float[]> grads = List.of(TestData.random(n, 2), TestData.random(n, 3), TestData.random(n, 4));
        try (SidecarFixture server = SidecarFixture.onSocket().start()) {
            ManagedChannel channel = server.channel();
            try {
                new OptSidecarClient(channel).register(
                        TestData.spec("pipe", "Adam", TestData.hp("lr", 0.01), n).build(), TestData.data(init));
                List<float[]> received = new ArrayList<>();
                List<Long> versions = new ArrayList<>();
                CompletableFuture<Void> done = new CompletableFuture<>();
                float[][] current = {new float[n]};
                StreamObserver<StepRequest> requests = OptimizerGrpc.newStub(channel).step(new StreamObserver<>() {
                    @Override
                    public void onNext(StepResponse r) {
                        if (r.hasWeights()) {
                            ByteBuffer b = r.getWeights().getData().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
                            b.asFloatBuffer().get(current[0], (int) r.getWeights().getOffset(), b.remaining() / 4);
                            versions.add(r.getWeights().getVersion());
                        } else {
                            assertEquals(received.size() + 1, r.getResult().getVersion());
                            received.add(current[0]);
                            current[0] = new float[n];
                        }
                    }

                    @Override
                    public void onError(Throwable t) {
                        done.completeExceptionally(t);
                    }

                    @Override
                    public void onCompleted() {
                        done.complete(null);
                    }
                });
                requests.onNext(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel("pipe")).build());
                for (int s = 0; s < grads.size(); s++) {
                    ByteBuffer bytes = ByteBuffer.allocate(n * 4).order(ByteOrder.LITTLE_ENDIAN);
                    bytes.asFloatBuffer().put(grads.get(s));
                    for (int off = 0; off < n; off += 262_144) {
                        int count = Math.min(262_144, n - off);
                        requests.onNext(StepRequest.newBuilder().setChunk(GradientChunk.newBuilder()
                                .setStepId(s + 1).setTensor(0).setOffset(off)
                                .setData(ByteString.copyFrom(bytes.duplicate().position(off * 4).limit((off + count) * 4))))
                                .build());
                    }
                    requests.onNext(StepRequest.newBuilder().setCommit(StepCommit.newBuilder().setStepId(s + 1)).build());
                }
                requests.onCompleted();
                done.get(60, TimeUnit.SECONDS);

                assertEquals(3, received.size());
                for (int s = 1; s <= 3; s++) {
                    double[] lrs = new double[s];
                    java.util.Arrays.fill(lrs, 0.01);
                    assertArrayEquals(TestData.applyLocally("Adam", TestData.hp("lr", 0.01), init, grads.subList(0, s), lrs),
                            received.get(s - 1), "weights returned for step " + s);
                }
                // Every chunk is labelled with the version it belongs to, in order.
                for (int i = 1; i < versions.size(); i++) {
                    org.junit.jupiter.api.Assertions.assertTrue(versions.get(i) >= versions.get(i - 1));
                }
            } finally {
                channel.shutdownNow();
            }
        }
    }
}
