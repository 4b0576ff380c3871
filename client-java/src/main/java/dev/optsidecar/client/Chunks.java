package dev.optsidecar.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.UnsafeByteOperations;
import dev.optsidecar.proto.v1.WireDtype;
import io.grpc.stub.ClientCallStreamObserver;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/** Cuts tensors into protocol chunks and sends them as fast as the transport accepts. */
final class Chunks {
    /** Payload bytes per chunk: 1 MiB, the protocol's limit and the fastest size measured. */
    static final int CHUNK_BYTES = 1 << 20;

    private Chunks() {}

    /** One chunk's position and bytes. */
    record Chunk(int tensor, long offset, ByteString data) {}

    /**
     * Sends every tensor as chunks through {@code send}, waiting on {@code gate} whenever the
     * stream is not ready, so at most a few chunks are ever buffered.
     */
    static void send(List<? extends TensorData> tensors, ReadyGate gate, Consumer<Chunk> send) {
        send(tensors, WireDtype.WIRE_FLOAT32, gate, send);
    }

    /** As {@link #send(List, ReadyGate, Consumer)}, the values as elements of {@code wire}. */
    static void send(List<? extends TensorData> tensors, WireDtype wire, ReadyGate gate, Consumer<Chunk> send) {
        int perChunk = CHUNK_BYTES / WireElements.bytes(wire);
        for (int t = 0; t < tensors.size(); t++) {
            TensorData data = tensors.get(t);
            for (long offset = 0; offset < data.numel(); offset += perChunk) {
                int count = (int) Math.min(perChunk, data.numel() - offset);
                ByteBuffer wrapped = wire == WireDtype.WIRE_FLOAT32 ? data.wrap(offset, count) : null;
                ByteString bytes;
                if (wire != WireDtype.WIRE_FLOAT32) {
                    bytes = UnsafeByteOperations.unsafeWrap(WireElements.narrow(data, offset, count, wire));
                } else if (wrapped != null) {
                    bytes = UnsafeByteOperations.unsafeWrap(wrapped);
                } else {
                    byte[] copy = new byte[count * Float.BYTES];
                    data.read(offset, count, ByteBuffer.wrap(copy));
                    bytes = UnsafeByteOperations.unsafeWrap(copy);
                }
                gate.awaitReady();
                send.accept(new Chunk(t, offset, bytes));
            }
        }
    }

    /** Blocks a sending thread until the stream is ready, woken by the stream's onReady callback. */
    static final class ReadyGate {
        private ClientCallStreamObserver<?> stream;
        private volatile Throwable failure;

        synchronized void attach(ClientCallStreamObserver<?> stream) {
            this.stream = stream;
        }

        synchronized void signal() {
            notifyAll();
        }

        synchronized void fail(Throwable t) {
            failure = t;
            notifyAll();
        }

        synchronized void awaitReady() {
            long deadline = System.nanoTime() + TimeUnit.MINUTES.toNanos(10);
            while (failure == null && !stream.isReady()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    throw new IllegalStateException("stream not ready for 10 minutes");
                }
                try {
                    TimeUnit.NANOSECONDS.timedWait(this, Math.min(left, TimeUnit.MILLISECONDS.toNanos(100)));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IllegalStateException("interrupted while sending", e);
                }
            }
            if (failure != null) {
                throw failure instanceof RuntimeException r ? r : new IllegalStateException(failure);
            }
        }
    }
}
