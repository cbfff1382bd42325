"""The model, training and evaluation of the quickstart, as a Flower user's task.py has them: plain
PyTorch, nothing federated in it. The data is MNIST from cohort's data folder ($COHORT_DATA_DIR),
normalised to [-1, 1] (this task's own choice, not cohort's)."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cohort.data.mnist import load_mnist, load_mnist_test
from cohort.data.partition import iid


class Net(nn.Module):
    """A small convolutional network for 28x28 grey images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _tensors(images, labels):
    x = torch.from_numpy((images.astype(np.float32) / 255.0 - 0.5) / 0.5)  # [-1, 1]
    return TensorDataset(x, torch.from_numpy(np.array(labels, dtype=np.int64)))


def load_data(partition_id, num_partitions, batch_size, examples=0, seed=0):
    """The training loader of one client (an IID share of MNIST's training set; ``examples`` > 0 keeps
    that many of them) and the shared test loader."""
    train, _ = load_mnist()
    rows = iid(len(train.y), num_partitions, seed)[partition_id]
    rows = rows[:examples] if examples else rows
    g = torch.Generator().manual_seed(seed * 1000 + partition_id)
    return (DataLoader(_tensors(train.x[rows], train.y[rows]), batch_size=batch_size, shuffle=True, generator=g),
            load_test(batch_size))


def load_test(batch_size=64, examples=0):
    """MNIST's test set (``examples`` > 0: its first ones), normalised as for training."""
    test = load_mnist_test()  # the test files only: a server that evaluates never opens the training set
    n = examples or len(test.y)
    return DataLoader(_tensors(test.x[:n], test.y[:n]), batch_size=batch_size)


def train(net, trainloader, epochs, lr, device="cpu"):
    """Train the network in place; return the mean training loss."""
    net.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running += loss.item()
            batches += 1
    return running / max(1, batches)


def test(net, testloader, device="cpu"):
    """Mean loss and accuracy of the network on a loader."""
    net.to(device)
    net.eval()
    criterion = nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images.to(device))
            loss += criterion(outputs, labels.to(device)).item() * len(labels)
            correct += (outputs.argmax(1) == labels.to(device)).sum().item()
    n = len(testloader.dataset)
    return loss / n, correct / n
