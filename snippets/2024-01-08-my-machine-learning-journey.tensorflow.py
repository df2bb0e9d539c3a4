# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: 'runner: tensorflow'
#     language: python
#     name: runner-tensorflow
# ---

# %% [markdown]
# *Made by the runner from `posts/2024-01-08-my-machine-learning-journey.md` for the pinned environment `tensorflow`. Edit code here and bring it back with `python -m runner sync THIS_FILE`; edit prose in the post.*

# %% [markdown]
# # My Machine Learning Journey: From Theory to Production
#
# Machine Learning has been one of the most transformative fields in technology over the past decade. My journey into ML started with curiosity about how computers can "learn" from data and has evolved into practical applications that solve real-world problems.
#
# ## The Beginning: Understanding the Fundamentals
#
# ### Mathematical Foundations
#
# Before diving into frameworks and libraries, I spent considerable time understanding the mathematical concepts:
#
# - **Linear Algebra**: Matrix operations, eigenvalues, and vector spaces
# - **Calculus**: Partial derivatives and gradient descent optimization
# - **Statistics**: Probability distributions, hypothesis testing, and Bayesian inference
# - **Information Theory**: Entropy, mutual information, and cross-entropy loss
#
# ### First Steps with Python
#
# Python became my language of choice due to its rich ecosystem:

# %% [markdown]
# ```python
# import numpy as np
# import pandas as pd
# import matplotlib.pyplot as plt
# from sklearn.linear_model import LinearRegression
# from sklearn.model_selection import train_test_split
# from sklearn.metrics import mean_squared_error
#
# # My first ML model - predicting house prices
# def build_simple_model(X, y):
#     X_train, X_test, y_train, y_test = train_test_split(
#         X, y, test_size=0.2, random_state=42
#     )
#     
#     model = LinearRegression()
#     model.fit(X_train, y_train)
#     
#     y_pred = model.predict(X_test)
#     mse = mean_squared_error(y_test, y_pred)
#     
#     return model, mse
#
# # Trained on the diabetes data set that ships with scikit-learn
# from sklearn.datasets import load_diabetes
#
# X, y = load_diabetes(return_X_y=True)
# model, mse = build_simple_model(X, y)
# print(f"Test MSE: {mse:.2f}")
# ```
#
# *(runs in another environment: see the post's other notebooks)*

# %% [markdown]
# ## Key Projects and Learning Milestones
#
# ### 1. Image Classification with CNNs
#
# One of my breakthrough projects involved building a Convolutional Neural Network for image classification:
#
# **Challenge**: Classify images of different dog breeds
# **Dataset**: Stanford Dogs Dataset (20,000+ images, 120 breeds)
# **Approach**: Transfer learning with pre-trained ResNet50

# %% runner={"post": "posts/2024-01-08-my-machine-learning-journey.md", "line": 81, "snippet": 2, "code": "f84aeb70f4a50251"}
import tensorflow as tf
from tensorflow.keras.applications import ResNet50
from tensorflow.keras.layers import Dense, GlobalAveragePooling2D
from tensorflow.keras.models import Model

def create_transfer_model(num_classes, weights='imagenet'):
    base_model = ResNet50(
        weights=weights,
        include_top=False,
        input_shape=(224, 224, 3)
    )
    
    # Freeze base model
    base_model.trainable = False
    
    # Add custom classifier
    x = base_model.output
    x = GlobalAveragePooling2D()(x)
    x = Dense(1024, activation='relu')(x)
    predictions = Dense(num_classes, activation='softmax')(x)
    
    model = Model(inputs=base_model.input, outputs=predictions)
    return model


# %% runner={"post": "posts/2024-01-08-my-machine-learning-journey.md", "line": 108, "snippet": 3, "code": "932431f7727bbec3"} tags=["hidden-in-post"]
# Build the model for the 120 breeds with random weights and take one training step on a
# synthetic batch: the same on every machine. (Loading the ImageNet weights is a download:
# that call is the skipped block below.)
import numpy as np

model = create_transfer_model(num_classes=120, weights=None)
print("Architecture checked with random weights (the ImageNet weights are a download)")

model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
images = np.random.default_rng(0).random((4, 224, 224, 3), dtype="float32")
loss = model.train_on_batch(images, np.arange(4))
print(f"Output shape: {model.output_shape}, parameters: {model.count_params():,}")
print(f"One training step on 4 synthetic images: finite loss = {bool(np.isfinite(loss))}")

# %% runner={"post": "posts/2024-01-08-my-machine-learning-journey.md", "line": 136, "snippet": 4, "code": "1f965dd8ef01fcf9"} tags=["hidden-in-post"]
imagenet_model = create_transfer_model(num_classes=120)

# %% [markdown]
# **Results**: Achieved 87% accuracy on test set, learned importance of data augmentation and proper validation strategies.
#
# ### 2. Natural Language Processing
#
# Working with text data opened up a whole new dimension:
#
# **Project**: Sentiment Analysis of Movie Reviews
# **Techniques**: 
# - Text preprocessing and tokenization
# - Word embeddings (Word2Vec, GloVe)
# - LSTM and Transformer architectures
#
# ### 3. Time Series Forecasting
#
# Predicting future values based on historical data:
#
# **Use Case**: Stock price prediction and energy consumption forecasting
# **Methods**: ARIMA models, LSTM networks, Prophet
#
# ## Moving from Notebooks to Production
#
# ### Model Deployment Challenges
#
# The transition from Jupyter notebooks to production systems taught me valuable lessons:
#
# 1. **Reproducibility**: Version control for data, models, and code
# 2. **Scalability**: Handling large datasets and concurrent requests
# 3. **Monitoring**: Tracking model performance and data drift
# 4. **Maintenance**: Retraining schedules and model updates
#
# ### MLOps Pipeline
#
# Implementing a complete MLOps pipeline:

# %% [markdown]
# ```python
# # Training step: fit a model and save it for the service to load
# import joblib
# from sklearn.datasets import load_diabetes
# from sklearn.linear_model import LinearRegression
#
# X, y = load_diabetes(return_X_y=True)
# joblib.dump(LinearRegression().fit(X, y), "trained_model.pkl")
# ```
#
# *(runs in another environment: see the post's other notebooks)*

# %% [markdown]
# ```python
# # Example model serving with FastAPI
# from typing import List
#
# from fastapi import FastAPI
# import joblib
# import numpy as np
#
# app = FastAPI()
# model = joblib.load('trained_model.pkl')
#
# @app.post("/predict")
# async def predict(features: List[float]):
#     X = np.array(features).reshape(1, -1)
#     prediction = model.predict(X)
#     return {"prediction": prediction.tolist()}
#
# @app.get("/health")
# async def health_check():
#     return {"status": "healthy"}
# ```
#
# *(runs in another environment: see the post's other notebooks)*

# %% [markdown]
# ```python
# # Serve the app with a real uvicorn on a free local port, call it over HTTP, stop it.
# import socket
# import threading
# import time
#
# import httpx
# import uvicorn
#
# sock = socket.socket()
# sock.bind(("127.0.0.1", 0))
# server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
# thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
# thread.start()
# try:
#     deadline = time.monotonic() + 30
#     while not server.started:
#         if not thread.is_alive() or time.monotonic() > deadline:
#             raise RuntimeError("uvicorn did not start")
#         time.sleep(0.05)
#     base = f"http://127.0.0.1:{sock.getsockname()[1]}"
#     health = httpx.get(f"{base}/health")
#     print("GET /health ->", health.status_code, health.json())
#     features = [0.04, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]
#     response = httpx.post(f"{base}/predict", json=features)
#     prediction = [round(value, 2) for value in response.json()["prediction"]]
#     print("POST /predict ->", response.status_code, {"prediction": prediction})
# finally:
#     server.should_exit = True
#     thread.join(timeout=10)
#     sock.close()
# ```
#
# *(runs in another environment: see the post's other notebooks)*

# %% [markdown]
# ### Docker and Kubernetes
#
# Containerizing ML applications for consistent deployment:
#
# ```dockerfile
# FROM python:3.9-slim
#
# WORKDIR /app
#
# COPY requirements.txt .
# RUN pip install --no-cache-dir -r requirements.txt
#
# COPY . .
#
# EXPOSE 8000
# CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000"]
# ```
#
# ## Key Lessons Learned
#
# ### 1. Data Quality Matters Most
#
# - Spend 80% of your time on data cleaning and exploration
# - Garbage in, garbage out principle is real
# - Feature engineering often trumps algorithm selection
#
# ### 2. Start Simple, Then Optimize
#
# - Begin with baseline models (linear regression, decision trees)
# - Understand your data before applying complex algorithms
# - Measure everything and iterate based on results
#
# ### 3. Domain Knowledge is Crucial
#
# - Understanding the business problem is as important as technical skills
# - Collaborate with domain experts
# - Question your assumptions and validate hypotheses
#
# ### 4. Ethical Considerations
#
# - Be aware of bias in data and algorithms
# - Consider the societal impact of your models
# - Implement fairness and transparency measures
#
# ## Tools and Technologies
#
# ### Development Environment
# - **Languages**: Python, R, SQL
# - **Frameworks**: TensorFlow, PyTorch, Scikit-learn
# - **Data Processing**: Pandas, NumPy, Apache Spark
# - **Visualization**: Matplotlib, Seaborn, Plotly
#
# ### Production Stack
# - **Deployment**: Docker, Kubernetes, AWS SageMaker
# - **Monitoring**: MLflow, Weights & Biases, TensorBoard
# - **Databases**: PostgreSQL, MongoDB, Redis
# - **APIs**: FastAPI, Flask, GraphQL
#
# ## Current Focus Areas
#
# ### 1. Large Language Models
#
# Exploring the capabilities and applications of LLMs:
# - Fine-tuning for specific domains
# - Prompt engineering techniques
# - RAG (Retrieval-Augmented Generation) systems
#
# ### 2. MLOps and Infrastructure
#
# Building robust ML systems:
# - Automated model training pipelines
# - A/B testing frameworks for models
# - Real-time inference optimization
#
# ### 3. Computer Vision
#
# Advanced CV applications:
# - Object detection and segmentation
# - Video analysis and processing
# - 3D computer vision
#
# ## Future Goals
#
# ### Short-term (6 months)
# - [ ] Complete MLOps specialization
# - [ ] Deploy a production ML service
# - [ ] Contribute to open-source ML projects
#
# ### Long-term (2 years)
# - [ ] Research publication in ML conference
# - [ ] Build end-to-end ML product
# - [ ] Mentor junior ML engineers
#
# ## Resources and Recommendations
#
# ### Books
# - "Hands-On Machine Learning" by Aurélien Géron
# - "The Elements of Statistical Learning" by Hastie, Tibshirani, and Friedman
# - "Pattern Recognition and Machine Learning" by Christopher Bishop
#
# ### Online Courses
# - Andrew Ng's Machine Learning Course (Coursera)
# - Fast.ai Practical Deep Learning
# - CS231n: Convolutional Neural Networks (Stanford)
#
# ### Communities
# - Kaggle competitions and discussions
# - ML Twitter community
# - Local ML meetups and conferences
#
# ## Conclusion
#
# The field of Machine Learning is vast and constantly evolving. What started as academic curiosity has become a practical skill set that I apply to solve real problems. The journey from understanding basic algorithms to deploying production systems has been challenging but incredibly rewarding.
#
# The key is to maintain a balance between theoretical understanding and practical application. Each project teaches something new, and the field's rapid evolution keeps it exciting.
#
# Whether you're just starting or looking to advance your ML career, remember that consistency and curiosity are your best assets. Keep building, keep learning, and don't be afraid to tackle challenging problems.
#
# ---
#
# *What aspects of Machine Learning are you most interested in? Feel free to reach out if you'd like to discuss any of these topics in more detail!*
